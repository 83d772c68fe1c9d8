"""Comparing a received record with a stored baseline, metric by metric, with direction-aware tolerances."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..metrics import BASELINE_METRIC, QUALITY_KEYS, Metric
from .record import BaselineFormatError, loads

# Context keys that say what was measured: a stored value that differs refuses the comparison.
IDENTITY_KEYS = {"model_sha256": "model weights (sha256 of config.json and weight files)",
                 "recipe_settings": "recipe settings"}
RECORDED_BEFORE_BATCH = 8  # the evaluation batch of every baseline recorded before baselines recorded it


@dataclass(frozen=True)
class Comparison:
    metric: Metric
    measured: float
    baseline: float
    tolerance: float

    def _bound(self, sign: int) -> float:
        """sign -1: the worst value still accepted; +1: the best value not yet 'improved'."""
        m, b, t = self.metric, self.baseline, self.tolerance
        toward_better = sign if m.higher_is_better else -sign
        return b * (1 + toward_better * t) if m.relative else b + toward_better * t

    @property
    def worst_accepted(self) -> float:
        return self._bound(-1)

    @property
    def improved_beyond(self) -> float:
        return self._bound(+1)

    @property
    def regressed(self) -> bool:
        return self.measured < self.worst_accepted if self.metric.higher_is_better else self.measured > self.worst_accepted

    @property
    def improved(self) -> bool:
        if self.metric.higher_is_better:
            return self.measured > self.improved_beyond
        return self.measured < self.improved_beyond

    def sentence(self, where: str, path: str) -> str:
        m = self.metric
        if self.regressed:
            word, sign, bound = ("below", "-", self.worst_accepted) if m.higher_is_better else ("above", "+", self.worst_accepted)
        else:
            word, sign, bound = "improved beyond", ("+" if m.higher_is_better else "-"), self.improved_beyond
        return (f"{m.label} {m.show(self.measured)} {word} baseline {m.show(self.baseline)} {sign} "
                f"{m.show_tolerance(self.tolerance)} = {m.show(bound)} {where} ({path})")


@dataclass
class Outcome:
    problems: list[str] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    reshaped: bool = False  # the file would be written differently (metrics added or dropped)
    stored: dict[str, Any] | None = None

    def matches(self, update: bool) -> bool:
        if self.problems or any(c.regressed for c in self.comparisons):
            return False
        return not (update and (self.reshaped or any(c.improved for c in self.comparisons)))


def compare(received: dict[str, Any], stored_text: str, tolerances: dict[str, float]) -> Outcome:
    """Compare a received record with a stored baseline's text for the metrics in ``tolerances``."""
    try:
        stored = loads(stored_text)
    except BaselineFormatError as exc:
        return Outcome(problems=[str(exc)])
    outcome = Outcome(stored=stored, reshaped=set(stored["metrics"]) != set(received["metrics"]))
    if QUALITY_KEYS & set(tolerances):
        then, now = _with_batch(stored["context"].get("eval")), _with_batch(received["context"].get("eval"))
        if then != now:
            outcome.problems.append(f"measured on {_describe_eval(then)}, this run on {_describe_eval(now)}: quality "
                                    "metrics are not comparable; use the baseline's --quant-eval-tokens, "
                                    "--quant-eval-text and evaluation batch, or refresh it with --snapshot-update")
    for key, what in IDENTITY_KEYS.items():
        then, now = stored["context"].get(key), received["context"].get(key)
        if then is None and now is not None:
            outcome.reshaped = True  # recorded before the plugin wrote it: --snapshot-update adds it
        elif now is not None and then != now:
            outcome.problems.append(f"recorded with {what} {_short(then)}, this run with {_short(now)}: it is the "
                                    "baseline of another model or recipe under the same name; refresh it with "
                                    "--snapshot-update")
    if "decode_tokens_per_s" in tolerances:
        then = (stored["context"].get("throughput") or {})
        now = (received["context"].get("throughput") or {})
        for name, default in (("decode_mode", "eager"), ("batch_size", 1)):
            if then.get(name, default) != now.get(name, default):
                outcome.problems.append(f"decode measured with {name} {then.get(name, default)!r}, this run with "
                                        f"{now.get(name, default)!r}: decode speeds are not comparable; refresh it "
                                        "with --snapshot-update")
    for key, tolerance in tolerances.items():
        if key not in stored["metrics"]:
            outcome.problems.append(f"has no {key}: refresh with --snapshot-update")
            continue
        outcome.comparisons.append(Comparison(BASELINE_METRIC[key], received["metrics"][key], stored["metrics"][key], tolerance))
    return outcome


def _short(value: Any) -> str:
    return f"{value[:12]}..." if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _describe_eval(ev: Any) -> str:
    if not isinstance(ev, dict):
        return "an unrecorded eval text"
    sha = str(ev.get("text_sha256", "?"))[:12]
    return (f"{ev.get('tokens', '?')} tokens of {ev.get('text', '?')} (sha256 {sha}...), "
            f"{ev.get('batch_windows', '?')} windows a batch")


def _with_batch(ev: Any) -> Any:
    """Baselines recorded before the batch was: every one of them was evaluated 8 windows a batch."""
    return {**ev, "batch_windows": ev.get("batch_windows", RECORDED_BEFORE_BATCH)} if isinstance(ev, dict) else ev
