"""Tests in a random order, to prove they do not depend on it (a pytest hook; tests/conftest.py registers it).

`SPLITDNN_SHUFFLE_SEED=<int>` shuffles the collected tests with that seed (the same seed, the same order, so a
failure can be replayed); unset, the order is pytest's. The seed is printed in the header.
"""

from __future__ import annotations

import os
import random

import pytest

ENV = "SPLITDNN_SHUFFLE_SEED"


def seed(environ=os.environ) -> int | None:
    value = environ.get(ENV, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(f"{ENV}={value!r}: expected an integer seed") from None


def pytest_collection_modifyitems(session, config, items) -> None:
    chosen = seed()
    if chosen is not None:
        random.Random(chosen).shuffle(items)


def pytest_report_header(config) -> str | None:
    chosen = seed()
    return None if chosen is None else f"tests shuffled: {ENV}={chosen}"
