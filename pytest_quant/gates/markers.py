"""The markers: one spec each (keywords, options, what it needs measured, its pure check), the parser that
validates a marker's arguments when the test is set up (a bad value is an error naming it), and the dispatch
``check(limits, metrics) -> [Violation]``. A marker's help text and accepted keywords come from its spec."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from ..metrics import Measurements
from ..units import parse_bytes
from .checks import PHASES, check_tokens_per_second, check_vram
from .limits import Limits, Violation
from .quality import CONFIDENCE_KEYWORDS, DEFAULT_GENERATION_TOKENS, check_generation, check_kl, check_perplexity
from .tasks import DEFAULT_TASK_CONFIDENCE, TASK_SCORES, check_layer_error, check_task_accuracy

# a failed gate of these names the worst layers (measured with quality and tasks: measure.layers)
NAMES_LAYERS = frozenset({"perplexity_delta", "kl_divergence", "generation_agreement", "task_accuracy"})

BASELINE_HELP = 'vs="baseline" (tolerance=...) compares with the stored baseline'


class MarkerError(ValueError):
    """A marker written with arguments that cannot be checked; the message names the bad value."""


@dataclass(frozen=True)
class MarkerSpec:
    name: str
    keywords: tuple[str, ...]  # the limits
    needs: frozenset[str]
    check: Callable[[Measurements, Limits], list[Violation]]
    meaning: str  # what the limits mean, for the help text
    positional: str | None = None  # keyword the single positional argument stands for
    ratio_keywords: frozenset[str] = frozenset()  # keywords measured against the reference
    options: tuple[str, ...] = ()  # non-limit keywords (phase=, batch=, confidence=, tokens=)
    baseline: bool = True  # vs="baseline" compares its figures

    @property
    def accepted(self) -> tuple[str, ...]:
        return self.keywords + self.options + (("vs", "tolerance") if self.baseline else ())

    @property
    def help(self) -> str:
        args = ", ".join(f"{k}=..." for k in self.keywords + self.options)
        return f"{self.name}({args}): {self.meaning}" + (f"; {BASELINE_HELP}" if self.baseline else "")


def _number(marker: str, key: str, value: Any, *, allow_zero: bool, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MarkerError(f"@pytest.mark.{marker}({key}={value!r}): expected a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        raise MarkerError(f"@pytest.mark.{marker}({key}={value!r}): must be {'>= 0' if allow_zero else '> 0'}")
    if maximum is not None and value > maximum:
        raise MarkerError(f"@pytest.mark.{marker}({key}={value!r}): must be at most {maximum:g}")
    return float(value)


def parse(spec: MarkerSpec, args: tuple, kwargs: dict[str, Any]) -> Limits:
    """Validate a marker's arguments into Limits, or raise MarkerError naming the bad value."""
    name = spec.name
    given = dict(kwargs)
    if args:
        if spec.positional is None or len(args) > 1:
            raise MarkerError(
                f"@pytest.mark.{name}: positional arguments {args!r} not accepted; use keywords: {', '.join(spec.keywords)}"
            )
        if spec.positional in given:
            raise MarkerError(f"@pytest.mark.{name}: {spec.positional} given twice")
        given[spec.positional] = args[0]
    # baselines: vs="baseline" and its tolerance= (validated by pytest_quant.baselines)
    vs, tolerance = given.pop("vs", None), given.pop("tolerance", None)
    options: dict[str, Any] = {}
    needs = spec.needs
    if name == "vram_budget" and "phase" in given:
        phase = given.pop("phase")
        if phase not in PHASES:
            raise MarkerError(f"@pytest.mark.vram_budget(phase={phase!r}): accepted: {', '.join(map(repr, PHASES))}")
        options["phase"] = phase
        if phase == "generate":
            needs = needs | {"throughput"}  # the peak over the timed decode
    if name == "tokens_per_second" and "batch" in given:
        batch = given.pop("batch")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise MarkerError(f"@pytest.mark.tokens_per_second(batch={batch!r}): expected a whole number >= 1")
        options["batch"] = batch
        needs = frozenset({f"throughput:{batch}"})
    if name in CONFIDENCE_KEYWORDS and "confidence" in given:
        options["confidence"] = _confidence(name, given.pop("confidence"), given)
    if name == "task_accuracy":
        options.setdefault("confidence", DEFAULT_TASK_CONFIDENCE)  # always judged by the paired bound
        score = given.pop("score", "acc")
        if score not in TASK_SCORES:
            raise MarkerError(f"@pytest.mark.task_accuracy(score={score!r}): accepted: {', '.join(map(repr, TASK_SCORES))}")
        options["score"] = score
    if name == "generation_agreement":
        tokens = given.pop("tokens", DEFAULT_GENERATION_TOKENS)
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise MarkerError(f"@pytest.mark.generation_agreement(tokens={tokens!r}): expected a whole number >= 1")
        options["tokens"] = tokens
        needs = frozenset({f"generation:{tokens}"})
        prefix = given.get("min_prefix_tokens")
        if isinstance(prefix, (int, float)) and not isinstance(prefix, bool) and prefix > tokens:
            raise MarkerError(f"@pytest.mark.generation_agreement(min_prefix_tokens={prefix!r}): more than the "
                              f"{tokens} tokens compared (tokens={tokens})")
    if vs is not None and not spec.baseline:
        raise MarkerError(f"@pytest.mark.{name}(vs={vs!r}): {name} has no stored baseline; give its limits")
    if vs is not None and vs != "baseline":
        raise MarkerError(f"@pytest.mark.{name}(vs={vs!r}): the only comparison is vs='baseline'")
    if tolerance is not None:
        if vs is None:
            raise MarkerError(f"@pytest.mark.{name}(tolerance={tolerance!r}): a tolerance needs vs='baseline'")
        from ..tolerances import parse_tolerance

        try:
            tolerance = parse_tolerance(name, tolerance)
        except ValueError as exc:
            raise MarkerError(str(exc)) from None
    unknown = sorted(set(given) - set(spec.keywords))
    if unknown:
        raise MarkerError(f"@pytest.mark.{name}: unknown keyword(s) {', '.join(unknown)}; accepted: "
                          f"{', '.join(spec.accepted)}")
    if not given and vs is None:
        raise MarkerError(f"@pytest.mark.{name} needs at least one limit: {', '.join(spec.keywords)} or vs='baseline'")
    values: dict[str, float] = {}
    for key, value in given.items():
        if name == "vram_budget" and key == "budget":
            try:
                values[key] = float(parse_bytes(value))
            except ValueError as exc:
                hint = (f"; for a fraction of the reference's memory write vram_budget(ratio={value!r})"
                        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1 else "")
                raise MarkerError(f"@pytest.mark.vram_budget({value!r}): {exc}{hint}") from None
        else:
            # upper limits may be 0 (no worse at all); floors and ratios must be positive
            values[key] = _number(name, key, value, allow_zero=key.startswith("max"),
                                  maximum=100.0 if key in ("min_top1", "min_exact_percent", "min_accuracy", "max_drop")
                                  else 1.0 if key == "min_cosine" else None)
    reference_needs = frozenset(needs) if set(given) & spec.ratio_keywords else frozenset()
    notes = ()
    if name == "kl_divergence" and 0 < values.get("min_top1", 100.0) <= 1:
        notes = (f"@pytest.mark.kl_divergence(min_top1={given['min_top1']!r}): top-1 agreement is in percent "
                 f"(0-100); did you mean min_top1={100 * given['min_top1']:g}?",)
    return Limits(name, values, frozenset(needs), reference_needs, vs=vs, tolerance=tolerance, notes=notes,
                  options=options)


def _confidence(name: str, value: Any, given: dict[str, Any]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.5 <= value < 1:
        raise MarkerError(f"@pytest.mark.{name}(confidence={value!r}): expected a one-sided confidence level in "
                          "[0.5, 1), such as 0.95")
    if not set(given) & set(CONFIDENCE_KEYWORDS[name]):
        raise MarkerError(f"@pytest.mark.{name}(confidence={value!r}) applies to {', '.join(CONFIDENCE_KEYWORDS[name])}; "
                          "give one of them")
    return float(value)


MARKERS: dict[str, MarkerSpec] = {
    spec.name: spec
    for spec in (
        MarkerSpec("vram_budget", ("budget", "ratio"), frozenset({"vram"}), check_vram, positional="budget",
                   meaning='GPU memory the loaded model holds (CPU: its footprint) at most budget ("6 GiB"), or at '
                           "most ratio x the reference's; phase=\"generate\": the peak over the timed decode instead",
                   ratio_keywords=frozenset({"ratio"}), options=("phase",)),
        MarkerSpec("tokens_per_second", ("min", "min_ratio"), frozenset({"throughput"}), check_tokens_per_second,
                   meaning="decode tokens/s at least min, or at least min_ratio x the reference measured in the same "
                           "session and decode mode; batch=N times N sequences decoded together",
                   ratio_keywords=frozenset({"min_ratio"}), options=("batch",)),
        MarkerSpec("perplexity_delta", ("max", "max_rel"), frozenset({"quality"}), check_perplexity,
                   meaning="perplexity at most max above the reference's (max_rel: as a fraction of it); "
                           "confidence=0.95: its one-sided upper bound must be too",
                   ratio_keywords=frozenset({"max", "max_rel"}), options=("confidence",)),
        MarkerSpec("kl_divergence", ("max_mean", "max_p99", "max_p999", "max_rms_delta_p", "min_top1"),
                   frozenset({"quality"}), check_kl,
                   meaning="KL(reference || quantized) in nats per token, RMS of the correct token's probability "
                           "change in points, top-1 agreement in percent; confidence=0.95: the one-sided bound of the "
                           "mean, RMS and top-1 (Wilson) must pass too",
                   ratio_keywords=frozenset({"max_mean", "max_p99", "max_p999", "max_rms_delta_p", "min_top1"}),
                   options=("confidence",)),
        MarkerSpec("generation_agreement", ("min_exact_percent", "min_prefix_tokens"), frozenset({"generation:32"}),
                   check_generation,
                   meaning="greedy generations of tokens= tokens (default 32) on the session's prompts "
                           "(--quant-prompts) against the reference's: the percent whose first tokens are all equal, "
                           "the mean tokens before the first divergence",
                   ratio_keywords=frozenset({"min_exact_percent", "min_prefix_tokens"}), options=("tokens",),
                   baseline=False),
        MarkerSpec("task_accuracy", ("max_drop", "min_accuracy"), frozenset({"tasks"}), check_task_accuracy,
                   meaning="the --quant-tasks items (default: the embedded cloze task) answered by both models: the "
                           "one-sided bound (confidence=, default 0.95) of the paired accuracy drop at most max_drop "
                           "points, the Wilson bound of the accuracy at least min_accuracy percent; score=\"acc_norm\": "
                           "length-normalised choices and normalised short answers",
                   ratio_keywords=frozenset({"max_drop"}), options=("confidence", "score"), baseline=False),
        MarkerSpec("layer_error", ("min_sqnr_db", "min_cosine"), frozenset({"layers"}), check_layer_error,
                   meaning="each decoder layer's and the lm_head's own error, run on the reference's input to it: "
                           "SQNR at least min_sqnr_db dB, per-token cosine similarity at least min_cosine",
                   ratio_keywords=frozenset({"min_sqnr_db", "min_cosine"}), baseline=False),
    )
}


def check(limits: Limits, metrics: Measurements) -> list[Violation]:
    spec = MARKERS[limits.marker]
    if metrics.is_reference:
        # The reference is the yardstick: a ratio or a delta against itself gates nothing.
        values = {k: v for k, v in limits.values.items() if k not in spec.ratio_keywords}
        limits = Limits(limits.marker, values, limits.needs, options=limits.options)
    relative = sorted(set(limits.values) & spec.ratio_keywords)
    no_kl = limits.marker == "kl_divergence" and metrics.quality is not None and metrics.quality.mean_kl_nats is None
    if relative and not metrics.is_reference and (metrics.reference is None or no_kl):
        return [Violation(limits.marker, f"@pytest.mark.{limits.marker}({', '.join(relative)}=...) compares with the "
                          f"unquantized reference, and {metrics.model} is a pre-quantized checkpoint without one: gate it "
                          f"with absolute limits or vs='baseline' {metrics.where}", float("nan"), float("nan"), "")]
    found = spec.check(metrics, limits) if limits.values else []
    where = metrics.layers.sentence() if limits.marker in NAMES_LAYERS and metrics.layers is not None else ""
    return [dataclasses.replace(v, reason=f"{v.reason}; {where}") for v in found] if where else found


@dataclass(frozen=True)
class ItemGates:
    """A test's markers, parsed once (at collection) into limits, or the error that names the bad value."""

    limits: tuple[Limits, ...] = ()
    error: str | None = None

    @property
    def needs(self) -> frozenset[str]:
        return frozenset().union(*(limit.needs for limit in self.limits))

    @property
    def reference_needs(self) -> frozenset[str]:
        return frozenset().union(*(limit.reference_needs for limit in self.limits))

    @property
    def baseline(self) -> tuple[Limits, ...]:
        return tuple(limit for limit in self.limits if limit.vs == "baseline")


GATES_KEY = pytest.StashKey[ItemGates]()


def gates_of(item: pytest.Item) -> ItemGates:
    """The item's parsed markers: parsed on the first call, from the stash after."""
    parsed = item.stash.get(GATES_KEY, None)
    if parsed is None:
        limits = []
        try:
            for mark in item.iter_markers():
                if mark.name in MARKERS:
                    limits.append(parse(MARKERS[mark.name], mark.args, mark.kwargs))
            parsed = ItemGates(tuple(limits))
        except MarkerError as exc:
            parsed = ItemGates(error=str(exc))
        item.stash[GATES_KEY] = parsed
    return parsed
