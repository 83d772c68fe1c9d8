"""The baseline gate: compare a test's measurements with its stored baseline through syrupy's ``snapshot``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from ..gates import Limits, Violation
from ..metrics import Measurements
from .compare import Outcome, compare
from .extension import bound
from .record import identity, record
from .rules import RULE, marker_rules
from .settings import SETTINGS_KEY, BaselineSettings


IMPROVED_PROPERTY = "quant.baseline_improved"
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


def check(item: pytest.Item, gated: tuple[Limits, ...], metrics: Measurements) -> BaselineResult:
    """Compare the test's measurements with its stored baseline through syrupy's ``snapshot`` fixture.

    One Violation per regressed metric or unusable baseline; a metric improved beyond its tolerance passes
    and is listed, so the baseline can be refreshed.
    """
    result = _check(item, gated, metrics)
    return result if isinstance(result, BaselineResult) else BaselineResult(result)


def _check(item: pytest.Item, gated: tuple[Limits, ...], metrics: Measurements) -> "BaselineResult | list[Violation]":
    if not gated:
        return []
    settings: BaselineSettings = item.config.stash[SETTINGS_KEY]
    tolerances: dict[str, float] = {}
    for limit in gated:
        for metric in marker_rules(limit.marker):
            tolerance = (limit.tolerance or {}).get(metric.key)
            if tolerance is None:
                tolerance = settings.tolerance(metric.key)
                if metric.key == "decode_tokens_per_s" and settings.device_kind == "cuda" and _eager(metrics):
                    tolerance = max(tolerance, EAGER_CUDA_DECODE_TOLERANCE)
            tolerances[metric.key] = tolerance
    marker = {key: RULE[key].marker for key in tolerances}
    unmeasured = [key for key in tolerances if RULE[key].read(metrics) is None]
    not_finite = [key for key in tolerances if key not in unmeasured and not math.isfinite(RULE[key].read(metrics))]
    if unmeasured or not_finite:
        return [Violation(marker[key], f"{key} {'was not measured' if key in unmeasured else 'is not finite'}: "
                          f"nothing to compare with the baseline {metrics.where}", math.nan, math.nan, "")
                for key in unmeasured + not_finite]

    snapshot = item.funcargs.get("snapshot")
    if snapshot is None:
        return [Violation(gated[0].marker, f"{item.nodeid}: a vs='baseline' marker added after collection cannot be "
                          "compared; add it at collection time (decorator, pytestmark or pytest_collection_modifyitems)",
                          math.nan, math.nan, "")]
    update = bool(snapshot.update_snapshots)
    assertion = snapshot.use_extension(bound(tolerances, update))
    path = assertion.extension.get_location(test_location=assertion.test_location, index=assertion.index)
    shown = settings.show(path)
    received = record(metrics, list(tolerances), settings, _identity(item, settings))
    assertion == received  # noqa: B015 - syrupy records the outcome
    result = assertion.executions[assertion.num_executions - 1]
    first = next(iter(marker.values()))

    if result.created or result.updated:
        return []
    if result.exception is not None:
        return [Violation(first, f"baseline {shown}: {type(result.exception).__name__}: {result.exception}",
                          math.nan, math.nan, "")]
    if result.recalled_data is None:
        return [Violation(first, f"no baseline for {metrics.model}/{settings.hardware}: run with --snapshot-update "
                          f"({shown})", math.nan, math.nan, "")]
    outcome = compare(received, result.recalled_data, tolerances)
    violations = [Violation(first, f"baseline {shown} {problem}" if problem.startswith("has no")
                            else f"baseline {shown}: {problem}", math.nan, math.nan, "") for problem in outcome.problems]
    for c in outcome.comparisons:
        if c.regressed:
            violations.append(Violation(c.metric.marker, c.sentence(metrics.where, shown), c.measured, c.worst_accepted,
                                        c.metric.key))
    improved = [c.sentence(metrics.where, shown) for c in outcome.comparisons if c.improved]
    return BaselineResult(violations, improved, _detail(outcome, shown, settings) if violations else None)


def _identity(item: pytest.Item, settings: BaselineSettings) -> dict | None:
    """The fingerprint of the test's model weights and recipe, computed once per session and pair."""
    callspec = getattr(item, "callspec", None)
    pair = callspec.params.get("quant_pair") if callspec is not None else None
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
