"""Baseline tolerances given on a marker (``tolerance=``) or in the ini (``quant_baseline_tolerances``), parsed
and validated against the metric table. Below both the gates and the baselines: each parses here."""

from __future__ import annotations

import math
import re
from typing import Any

from .metrics import BASELINE_METRIC, Metric, marker_metrics

TOLERANCE_INI = "quant_baseline_tolerances"
DEVICE_KINDS = ("cpu", "cuda")


class ToleranceError(ValueError):
    """A tolerance that cannot be used; the message names the value and what is accepted."""


def tolerance_value(metric: Metric, value: Any) -> float:
    """A tolerance for ``metric``, or ToleranceError saying what is accepted."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ToleranceError(f"tolerance for {metric.key} must be a finite number >= 0, got {value!r}")
    if metric.relative and metric.higher_is_better and value >= 1:
        raise ToleranceError(f"tolerance for {metric.key} is a fraction of the baseline and must be below 1, got {value!r}")
    return float(value)


def parse_tolerance(marker: str, value: Any) -> dict[str, float]:
    """A marker's ``tolerance=``: a number for its first metric, or a dict of metric -> number."""
    metrics = marker_metrics(marker)
    given = value if isinstance(value, dict) else {metrics[0].key: value}
    out = {}
    for key, tolerance in given.items():
        if key not in {m.key for m in metrics}:
            raise ToleranceError(f"@pytest.mark.{marker}(tolerance={value!r}): unknown metric {key!r}; "
                                 f"this marker compares {', '.join(m.key for m in metrics)}")
        try:
            out[key] = tolerance_value(BASELINE_METRIC[key], tolerance)
        except ToleranceError as exc:
            raise ToleranceError(f"@pytest.mark.{marker}(tolerance={value!r}): {exc}") from None
    return out


def parse_tolerance_ini(lines: list[str]) -> dict[tuple[str | None, str], float]:
    """``quant_baseline_tolerances`` lines, ``[cpu:|cuda:]metric = number`` -> {(device kind, metric): tolerance};
    ToleranceError naming the line otherwise."""
    out: dict[tuple[str | None, str], float] = {}
    for line in lines:
        match = re.fullmatch(r"\s*(?:(\w+):)?\s*(\w+)\s*=\s*(\S+)\s*", line)
        kind, key, raw = match.groups() if match else (None, None, None)
        problem = None
        if match is None:
            problem = "expected '[cpu:|cuda:]metric = number'"
        elif kind is not None and kind not in DEVICE_KINDS:
            problem = f"unknown device kind {kind!r}; use cpu: or cuda:"
        elif key not in BASELINE_METRIC:
            problem = f"unknown metric {key!r}; known: {', '.join(BASELINE_METRIC)}"
        else:
            try:
                out[(kind, key)] = tolerance_value(BASELINE_METRIC[key], float(raw))
            except ValueError as exc:
                problem = str(exc)
        if problem:
            raise ToleranceError(f"ini {TOLERANCE_INI} line {line!r}: {problem}")
    return out
