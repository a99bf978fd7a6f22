"""Explicit units for link and workload parameters: durations (`2.5ms`), rates (`4mbit`), shares (`1%`).

The same regular expressions are used in the CRD schema (crds/splitinference.yaml), so what the API server
accepts is exactly what these parsers accept.
"""

from __future__ import annotations

import re

DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?(us|ms|s|m)$"
RATE_PATTERN = r"^[0-9]+(\.[0-9]+)?(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)$"
PERCENT_PATTERN = r"^[0-9]+(\.[0-9]+)?%$"

_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
# tc's conventions: "bit" suffixes are bits per second, "bps" suffixes are BYTES per second.
_RATE_UNITS = {
    "bit": 1 / 8,
    "kbit": 1e3 / 8,
    "mbit": 1e6 / 8,
    "gbit": 1e9 / 8,
    "bps": 1.0,
    "kbps": 1e3,
    "mbps": 1e6,
    "gbps": 1e9,
}


def _split(text: str, pattern: str, what: str, example: str) -> tuple[float, str]:
    m = (
        re.match(r"^([0-9.]+)(.*)$", text.strip())
        if isinstance(text, str) and re.match(pattern, text.strip())
        else None
    )
    if m is None:
        raise ValueError(f"bad {what} {text!r}: expected a number with a unit, like {example}")
    return float(m.group(1)), m.group(2)


def parse_duration(text: str | float | int) -> float:
    """`2.5ms` → 0.0025 seconds. Plain numbers are taken as seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    value, unit = _split(text, DURATION_PATTERN, "duration", "2.5ms, 250ms or 1s")
    return value * _DURATION_UNITS[unit]


def parse_rate(text: str | float | int) -> float:
    """`4mbit` → 500000.0 bytes per second (tc units). Plain numbers are bytes per second."""
    if isinstance(text, (int, float)):
        return float(text)
    value, unit = _split(text, RATE_PATTERN, "rate", "4mbit or 100kbit")
    return value * _RATE_UNITS[unit]


def parse_percent(text: str | float | int) -> float:
    """`1.5%` → 0.015. Plain numbers are fractions already."""
    if isinstance(text, (int, float)):
        return float(text)
    value, _ = _split(text, PERCENT_PATTERN, "percentage", "0%, 1% or 2.5%")
    if value > 100:
        raise ValueError(f"bad percentage {text!r}: more than 100%")
    return value / 100.0


def format_duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:g}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:g}ms"
    return f"{seconds * 1e6:g}us"


def format_rate(bytes_per_second: float) -> str:
    """Bytes per second → tc rate text in bits per second (`4mbit`)."""
    bits = bytes_per_second * 8
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bits >= scale:
            return f"{bits / scale:g}{unit}"
    return f"{bits:g}bit"
