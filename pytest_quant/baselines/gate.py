"""The baseline gate: compare a test's measurements with its stored baseline through syrupy's ``snapshot``,
once, on the raw record; on a GPU kind with no baseline of its own, quality is compared with the same test's
baseline of another CUDA kind (quality figures do not depend on the GPU's name), speed and memory fail."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..gates.limits import Limits, Violation
from ..metrics import BASELINE_METRIC, QUALITY_KEYS, Measurements, marker_metrics
from .compare import Outcome, compare
from .extension import bound
from .record import identity, record
from .settings import SETTINGS_KEY, BaselineSettings, pair_of

IMPROVED_PROPERTY = "quant.baseline_improved"
MISSING_PROPERTY = "quant.baseline_missing"  # the one line, counted once per session by the plugin
FROM_PROPERTY = "quant.baseline_from"  # the hardware key whose baseline gated quality, when not this one's
# A recipe whose decode could not be captured in a CUDA graph (LLM.int8) is timed eagerly: then the host's
# Python and kernel launches set the pace, and the same recipe measured 30-40% apart between sessions on the
# H100. Its default tolerance stays wide; a marker's tolerance= still wins.
EAGER_CUDA_DECODE_TOLERANCE = 0.5


def _eager(metrics: Measurements) -> bool:
    return metrics.throughput is not None and metrics.throughput.decode_mode == "eager"


@dataclass(frozen=True)
class BaselineResult:
    violations: list[Violation] = field(default_factory=list)
    improved: list[str] = field(default_factory=list)  # sentences: metrics better than the baseline's tolerance
    detail: str | None = None  # the "quant baseline" report section, when something regressed
    baseline_from: str | None = None  # another hardware key whose baseline gated quality
    missing: str | None = None  # the one line for a hardware key with no baseline of its own


def _problem(marker: str, reason: str) -> Violation:
    return Violation(marker, reason, math.nan, math.nan, "")


def tolerances_of(gated: tuple[Limits, ...], settings: BaselineSettings, metrics: Measurements) -> dict[str, float]:
    """Each compared metric's tolerance: the marker's, else the ini's, else the metric table's default."""
    tolerances: dict[str, float] = {}
    for limit in gated:
        for metric in marker_metrics(limit.marker):
            tolerance = (limit.tolerance or {}).get(metric.key)
            if tolerance is None:
                tolerance = settings.tolerance(metric.key)
                if metric.key == "decode_tokens_per_s" and settings.device_kind == "cuda" and _eager(metrics):
                    tolerance = max(tolerance, EAGER_CUDA_DECODE_TOLERANCE)
            tolerances[metric.key] = tolerance
    return tolerances


def check(item: pytest.Item, gated: tuple[Limits, ...], metrics: Measurements) -> BaselineResult:
    """One Violation per regressed metric or unusable baseline; a metric improved beyond its tolerance passes
    and is listed, so the baseline can be refreshed."""
    if not gated:
        return BaselineResult()
    settings: BaselineSettings = item.config.stash[SETTINGS_KEY]
    tolerances = tolerances_of(gated, settings, metrics)
    unmeasured = [key for key in tolerances if BASELINE_METRIC[key].read(metrics) is None]
    not_finite = [key for key in tolerances if key not in unmeasured and not math.isfinite(BASELINE_METRIC[key].read(metrics))]
    if unmeasured or not_finite:
        return BaselineResult([_problem(BASELINE_METRIC[key].marker, f"{key} {'was not measured' if key in unmeasured else 'is not finite'}: "
                                        f"nothing to compare with the baseline {metrics.where}")
                               for key in unmeasured + not_finite])
    snapshot = item.funcargs.get("snapshot")
    if snapshot is None:
        return BaselineResult([_problem(gated[0].marker, f"{item.nodeid}: a vs='baseline' marker added after collection "
                                        "cannot be compared; add it at collection time (decorator, pytestmark or "
                                        "pytest_collection_modifyitems)")])
    update = bool(snapshot.update_snapshots)
    received = record(metrics, list(tolerances), settings, _identity(item, settings))
    outcomes: list[Outcome] = []
    assertion = snapshot.use_extension(bound(tolerances, update, received, outcomes))
    path = Path(assertion.extension.get_location(test_location=assertion.test_location, index=assertion.index))
    shown = settings.show(path)
    first = BASELINE_METRIC[next(iter(tolerances))].marker
    writes_new = update or bool(getattr(snapshot, "update_new_snapshots_only", False))  # --snapshot-update-new-only
    if not writes_new and not path.exists() and not path.is_symlink():
        return without_own_baseline(settings, metrics, tolerances, received, path, first)
    assertion == received  # noqa: B015 - syrupy records the outcome; the extension compares once
    result = assertion.executions[assertion.num_executions - 1]
    if result.created or result.updated:
        return BaselineResult()
    if result.exception is not None:
        return BaselineResult([_problem(first, f"baseline {shown}: {type(result.exception).__name__}: {result.exception}")])
    if result.recalled_data is None or not outcomes:
        return BaselineResult([_problem(first, f"no baseline for {metrics.model}/{settings.hardware}: run with "
                                        f"--snapshot-update ({shown})")])
    return _result(outcomes[-1], metrics, shown, settings, first)


def _result(outcome: Outcome, metrics: Measurements, shown: str, settings: BaselineSettings, first: str,
            **extra) -> BaselineResult:
    violations = [_problem(first, f"baseline {shown} {problem}" if problem.startswith("has no")
                           else f"baseline {shown}: {problem}") for problem in outcome.problems]
    for c in outcome.comparisons:
        if c.regressed:
            violations.append(Violation(c.metric.marker, c.sentence(metrics.where, shown), c.measured, c.worst_accepted,
                                        c.metric.key))
    improved = [c.sentence(metrics.where, shown) for c in outcome.comparisons if c.improved]
    return BaselineResult(violations, improved, _detail(outcome, shown, settings) if violations else None, **extra)


def without_own_baseline(settings: BaselineSettings, metrics: Measurements, tolerances: dict[str, float],
                          received: dict, path: Path, first: str) -> BaselineResult:
    """No baseline for this hardware key: quality against another CUDA kind's baseline of the same test (the
    rule of ``BaselineSettings.fallback``), speed and memory fail with the line that says how to record them."""
    if settings.device_kind != "cuda":
        return BaselineResult([_problem(first, f"no baseline for {metrics.model}/{settings.hardware}: run with "
                                        f"--snapshot-update ({settings.show(path)})")])
    missing = settings.missing_line(metrics.model)
    quality = {k: t for k, t in tolerances.items() if k in QUALITY_KEYS}
    others = [k for k in tolerances if k not in QUALITY_KEYS]
    violations = [_problem(BASELINE_METRIC[k].marker, f"{k}: {missing}") for k in others]
    if not quality:
        return BaselineResult(violations, missing=missing)
    other = settings.fallback(path) if settings.device_kind == "cuda" else None
    if other is None:
        keys = ", ".join(quality)
        return BaselineResult(violations + [_problem(first, f"{keys}: {missing}; no other GPU kind has this test's "
                                                     "baseline either")], missing=missing)
    outcome = compare(received, other.read_text(encoding="utf-8"), quality)
    result = _result(outcome, metrics, settings.show(other), settings, first, baseline_from=other.parent.name,
                     missing=missing if others else None)
    return BaselineResult(violations + result.violations, result.improved, result.detail, result.baseline_from,
                          result.missing)


def _identity(item: pytest.Item, settings: BaselineSettings) -> dict | None:
    """The fingerprint of the test's model weights and recipe, computed once per session and pair."""
    pair = pair_of(item)
    if pair is None:
        return None
    if pair.id not in settings.identities:
        cache = getattr(item.config, "cache", None)
        memo_dir = cache.mkdir("quant") if cache is not None else None  # per-file hashes, kept across sessions
        settings.identities[pair.id] = identity(pair.model.path, pair.recipe, memo_dir)
    return settings.identities[pair.id]


def _detail(outcome: Outcome, shown: str, settings: BaselineSettings) -> str:
    lines = [f"baseline: {shown} (hardware key {settings.hardware})"]
    for c in outcome.comparisons:
        state = "regressed" if c.regressed else "improved beyond tolerance" if c.improved else "within tolerance"
        lines.append(f"{c.metric.key}: measured {c.metric.show(c.measured)}, baseline {c.metric.show(c.baseline)}, "
                     f"tolerance {c.metric.show_tolerance(c.tolerance)}: {state}")
    if outcome.stored is not None:
        then = outcome.stored["context"].get("versions", {})
        now = settings.environment["versions"]
        changed = [f"{k} {then.get(k, '-')} -> {now.get(k, '-')}" for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
        if changed:
            lines.append("versions since the baseline: " + ", ".join(changed))
    return "\n".join(lines)
