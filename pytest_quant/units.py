"""Byte sizes: '6 GiB' -> bytes, and bytes -> '6.00 GiB'."""

from __future__ import annotations

import re
from typing import Any

_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
SIZE_HELP = "a number and a unit such as '6 GiB', '512 MiB' or '1.5 GB' (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
MIB = 2**20


def parse_bytes(value: Any) -> int:
    """'6 GiB' -> 6442450944. A bare integer is bytes; anything under one byte is refused."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; write {SIZE_HELP}")
    if isinstance(value, (int, float)):
        size = float(value)
    else:
        match = _SIZE.match(str(value))
        unit = match.group(2).lower() if match else None
        if not match or (unit and unit not in _UNITS):
            raise ValueError(f"{value!r} is not a size; write {SIZE_HELP}")
        size = float(match.group(1)) * _UNITS[unit or "b"]
    if size < 1:
        raise ValueError(f"size {value!r} is under one byte; write {SIZE_HELP}")
    return int(size)


def format_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {unit}"
    return f"{int(n)} B"
