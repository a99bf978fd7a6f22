"""Strategy registry. Built-ins: ``dp`` (default, exact and polynomial), ``labels`` (exact label search),
``brute`` (exhaustive oracle). More are found through the entry-point group ``splitdnn.strategies``: each entry
point names a class (or factory) whose instances have ``solve(compiled, objective, top) -> list[block ends]``,
best first. See docs/planner.md, "Writing a strategy".
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points

GROUP = "splitdnn.strategies"
DEFAULT = "dp"


def _builtins() -> dict:
    from .brute import BruteStrategy
    from .dp import DPStrategy, LabelStrategy

    return {"dp": DPStrategy, "labels": LabelStrategy, "brute": BruteStrategy}


@lru_cache(maxsize=1)
def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available() -> dict:
    """name -> loader; entry points override nothing built in with the same name (built-ins win)."""
    found = dict(_entry_points())
    found.update({k: v for k, v in _builtins().items()})
    return found


def get(name: str = DEFAULT):
    """An instance of the named strategy."""
    builtins = _builtins()
    reg = builtins if name in builtins else available()
    if name not in reg:
        raise KeyError(f"unknown planner strategy {name!r}; available: {', '.join(sorted(reg))}")
    obj = reg[name]
    if hasattr(obj, "load") and not isinstance(obj, type):
        obj = obj.load()
    inst = obj() if callable(obj) else obj
    if not hasattr(inst, "solve"):
        raise TypeError(f"planner strategy {name!r} has no solve(compiled, objective, top) method")
    return inst
