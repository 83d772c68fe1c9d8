"""The markers' argument parsers and pure checks: ``check(metrics, limits) -> Violation | None``.

Each marker validates its arguments when the test is set up (a bad value is an error naming it) and
declares what it needs measured, so the plugin measures only what a test's markers ask for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from .limits import Limits, Violation
from .metrics import Measurements
from .quality_gates import (CONFIDENCE_KEYWORDS, DEFAULT_GENERATION_TOKENS, check_generation, check_kl,
                            check_perplexity)
from .units import format_bytes, parse_bytes


class MarkerError(ValueError):
    """A marker written with arguments that cannot be checked; the message names the bad value."""


NEEDS = ("quality", "vram", "throughput")


@dataclass(frozen=True)
class MarkerSpec:
    name: str
    keywords: tuple[str, ...]
    needs: frozenset[str]
    check: Callable[[Measurements, Limits], list[Violation]]
    positional: str | None = None  # keyword the single positional argument stands for
    help: str = ""
    ratio_keywords: frozenset[str] = frozenset()  # keywords measured against the reference


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
    if vs is not None and vs != "baseline":
        raise MarkerError(f"@pytest.mark.{name}(vs={vs!r}): the only comparison is vs='baseline'")
    if tolerance is not None:
        if vs is None:
            raise MarkerError(f"@pytest.mark.{name}(tolerance={tolerance!r}): a tolerance needs vs='baseline'")
        from .baselines.rules import parse_tolerance

        try:
            tolerance = parse_tolerance(name, tolerance)
        except ValueError as exc:
            raise MarkerError(str(exc)) from None
    unknown = sorted(set(given) - set(spec.keywords))
    if unknown:
        raise MarkerError(
            f"@pytest.mark.{name}: unknown keyword(s) {', '.join(unknown)}; accepted: {', '.join(spec.keywords)}, "
            + {"vram_budget": "phase, ", "tokens_per_second": "batch, ", "perplexity_delta": "confidence, ",
               "kl_divergence": "confidence, ", "generation_agreement": "tokens, "}.get(name, "") + "vs, tolerance"
        )
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
                                  maximum=100.0 if key in ("min_top1", "min_exact_percent") else None)
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


def _pct(measured: float, limit: float) -> str:
    return f"{100.0 * (measured - limit) / limit:+.1f}%" if limit else ""


PHASES = ("resident", "generate")


def _vram_figure(m: Measurements, phase: str) -> tuple[float | None, str]:
    """The figure a VRAM budget reads, and what to call it: resident (or the CPU footprint) by default;
    the allocator peak over the timed decode with phase="generate" (the footprint on CPU)."""
    if m.vram is None:
        return None, "VRAM"
    if phase == "generate" and m.vram.generate_peak_bytes is not None:
        return m.vram.generate_peak_bytes, "peak while generating"
    return m.vram.resident_bytes, "resident" if m.vram.load_peak_bytes is not None else "footprint"


def check_vram(m: Measurements, limits: Limits) -> list[Violation]:
    out = []
    phase = limits.options.get("phase", "resident")
    peak, what = _vram_figure(m, phase)
    budget = limits.values.get("budget")
    if budget is not None and peak > budget:
        out.append(Violation("vram_budget", f"VRAM budget {format_bytes(budget)} exceeded: {what} {format_bytes(peak)} "
                             f"({_pct(peak, budget)}) {m.where}", peak, budget, "bytes"))
    ratio = limits.values.get("ratio")
    if ratio is not None:
        ref, _ = _vram_figure(m.reference, phase)
        measured = peak / ref
        if measured > ratio:
            out.append(Violation("vram_budget", f"VRAM ratio {measured:.3f} of reference exceeds {ratio:.3f}: {what} "
                                 f"{format_bytes(peak)} vs reference {format_bytes(ref)} {m.where}", measured, ratio, "ratio"))
    return out


def check_tokens_per_second(m: Measurements, limits: Limits) -> list[Violation]:
    out = []
    batch = limits.options.get("batch")
    t = m.throughput_at(batch)
    tps = t.decode_tokens_per_s
    at = f" at batch {t.batch_size}" if t.batch_size != 1 else ""
    floor = limits.values.get("min")
    if floor is not None and tps < floor:
        out.append(Violation("tokens_per_second", f"decode {tps:.1f} tok/s{at} below floor {floor:g} tok/s "
                             f"({_pct(tps, floor)}, {t.decode_mode}) {m.where}", tps, floor, "tokens/s"))
    ratio = limits.values.get("min_ratio")
    if ratio is not None:
        ref = m.reference.throughput_at(batch).decode_tokens_per_s
        measured = tps / ref
        if measured < ratio:
            out.append(Violation("tokens_per_second", f"decode {tps:.1f} tok/s{at} is {measured:.3f} x reference "
                                 f"{ref:.1f} tok/s, below min_ratio {ratio:g} {m.where}", measured, ratio, "ratio"))
    return out


MARKERS: dict[str, MarkerSpec] = {
    spec.name: spec
    for spec in (
        MarkerSpec("vram_budget", ("budget", "ratio"), frozenset({"vram"}), check_vram, positional="budget",
                   help='vram_budget("6 GiB") or vram_budget(ratio=0.5): GPU memory the loaded model holds (CPU: its '
                        "footprint) at most the budget, or at most ratio x the reference's; phase=\"generate\": the peak "
                        "over the timed decode instead; vs=\"baseline\" (tolerance=...) compares with the stored baseline", ratio_keywords=frozenset({"ratio"})),
        MarkerSpec("tokens_per_second", ("min", "min_ratio"), frozenset({"throughput"}), check_tokens_per_second,
                   help="tokens_per_second(min=..., min_ratio=...): decode tokens/s at least min, or at least "
                        "min_ratio x the reference measured in the same session; vs=\"baseline\" (tolerance=...) compares with the stored baseline", ratio_keywords=frozenset({"min_ratio"})),
        MarkerSpec("perplexity_delta", ("max", "max_rel"), frozenset({"quality"}), check_perplexity,
                   help="perplexity_delta(max=..., max_rel=..., confidence=...): perplexity at most max above the "
                        "reference's (max_rel: as a fraction of it); confidence=0.95: its one-sided upper bound must be "
                        "too; vs=\"baseline\" (tolerance=...) compares with the stored baseline", ratio_keywords=frozenset({"max", "max_rel"})),
        MarkerSpec("kl_divergence", ("max_mean", "max_p99", "max_p999", "max_rms_delta_p", "min_top1"), frozenset({"quality"}),
                   check_kl, help="kl_divergence(max_mean=..., max_p99=..., max_p999=..., max_rms_delta_p=..., min_top1=..., "
                        "confidence=...): KL(reference || quantized) in nats per token, RMS of the correct token's "
                        "probability change in points, top-1 agreement in percent; confidence=0.95: the one-sided bound "
                        "of the mean, RMS and top-1 (Wilson) must pass too; vs=\"baseline\" (tolerance=...) compares "
                        "with the stored baseline", ratio_keywords=frozenset({"max_mean", "max_p99", "max_p999",
                                                                               "max_rms_delta_p", "min_top1"})),
        MarkerSpec("generation_agreement", ("min_exact_percent", "min_prefix_tokens"), frozenset({"generation:32"}),
                   check_generation, help="generation_agreement(min_exact_percent=..., min_prefix_tokens=..., tokens=32):"
                        " greedy generations on the session's prompts (--quant-prompts) against the reference's: the "
                        "percent whose first tokens are all equal, the mean tokens before the first divergence",
                   ratio_keywords=frozenset({"min_exact_percent", "min_prefix_tokens"})),
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
    return spec.check(metrics, limits) if limits.values else []


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
