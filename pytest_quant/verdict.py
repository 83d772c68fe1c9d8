"""A test's verdict, where its markers' pure checks and its baseline comparison meet: what is violated, what
improved, the report sections. A violated gate is raised as ``GateViolation`` in the test's call phase, as a
failing assert is, so that ``xfail``, ``xfail(strict=True)`` and ``--runxfail`` treat it the same way."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from . import gates
from .metrics import Measurements


class GateViolation(AssertionError):
    """One or more violated gates of a test: its message is one line per violation."""


@dataclass(frozen=True)
class Verdict:
    violations: list[gates.Violation] = field(default_factory=list)
    properties: list[tuple[str, object]] = field(default_factory=list)  # the baseline's improved list, its source
    sections: list[tuple[str, str]] = field(default_factory=list)  # (title, text) for the report

    @property
    def reasons(self) -> str:
        return "\n".join(v.reason for v in self.violations)


def judge(item: pytest.Item, measured: Measurements, body_failed: bool = False) -> Verdict:
    """Every limit of the item's markers against ``measured``, then its baseline comparison (a broken baseline
    fails this test, not the session). A test whose body failed never records or refreshes its baseline."""
    parsed = gates.gates_of(item)
    violations = [v for limit in parsed.limits for v in gates.check(limit, measured)]
    properties: list[tuple[str, object]] = []
    sections: list[tuple[str, str]] = []
    option = item.config.option
    updating = getattr(option, "update_snapshots", False) or getattr(option, "update_new_snapshots_only", False)
    if parsed.baseline and body_failed and updating:
        sections.append(("quant baseline", "not recorded or refreshed: the test body failed"))
    elif parsed.baseline:
        from .baselines.gate import FROM_PROPERTY, IMPROVED_PROPERTY, MISSING_PROPERTY, check

        try:
            baseline = check(item, parsed.baseline, measured)
        except Exception as exc:  # noqa: BLE001 - reported as this test's failure
            violations.append(gates.Violation(parsed.baseline[0].marker, f"baseline check failed: "
                                              f"{type(exc).__name__}: {exc}", math.nan, math.nan, ""))
        else:
            violations += baseline.violations
            if baseline.improved:
                properties.append((IMPROVED_PROPERTY, baseline.improved))
            if baseline.baseline_from:
                properties.append((FROM_PROPERTY, baseline.baseline_from))
            if baseline.missing:
                properties.append((MISSING_PROPERTY, baseline.missing))
            if baseline.detail:
                sections.append(("quant baseline", baseline.detail))
    return Verdict(violations, properties, sections)
