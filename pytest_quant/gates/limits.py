"""What a marker's arguments become (``Limits``) and what a broken one reports (``Violation``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Violation:
    marker: str
    reason: str  # one line: what was measured against which limit, with units
    measured: float
    limit: float
    unit: str


@dataclass(frozen=True)
class Limits:
    marker: str
    values: dict[str, float] = field(default_factory=dict)
    needs: frozenset[str] = frozenset()
    reference_needs: frozenset[str] = frozenset()
    # baselines (pytest_quant.baselines): vs="baseline" compares with the stored baseline
    vs: str | None = None
    tolerance: dict[str, float] | None = None  # metric -> tolerance given on the marker
    notes: tuple[str, ...] = ()  # warnings about arguments that are valid but probably not meant
    options: dict[str, Any] = field(default_factory=dict)  # non-numeric settings, e.g. vram_budget(phase=...)
