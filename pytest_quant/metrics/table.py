"""The metric table: key with its unit, label, direction, decimals (stored and shown), how to read it from
``Measurements`` and how a baseline compares it. Gates, baselines, properties and reports all read it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

from ..measure.stats import DELTA_P_PERCENTILES, KL_PERCENTILES
from ..units import format_bytes
from .measurements import Measurements


@dataclass(frozen=True)
class BaselineRule:
    """How a stored baseline compares a metric: the marker whose vs="baseline" compares it, whether its
    tolerance is a fraction of the baseline or in the metric's own unit, and the default tolerance per device kind."""

    marker: str
    relative: bool
    tolerance_unit: str  # how an absolute tolerance reads in a message
    defaults: dict[str, float]


@dataclass(frozen=True)
class Metric:
    """One row of the metric table: every place that writes, shows or compares a figure reads it here."""

    key: str  # unit in the name; the key in properties, reports and baseline files
    label: str
    unit: str
    higher_is_better: bool | None  # None: not a quality direction (context figures)
    decimals: int  # fixed precision wherever the raw number is written (properties, baselines, JSON reports)
    read: Callable[[Measurements], float | None]
    show: Callable[[float], str]  # in sentences: with its unit
    table_decimals: int | None = None  # in report tables and the terminal (None: ``show``'s text without unit)
    baseline: BaselineRule | None = None  # compared with a stored baseline (vs="baseline"); None: never

    def value(self, m: Measurements) -> float | None:
        value = self.read(m)
        return None if value is None else round(float(value), self.decimals) if self.decimals else int(round(value))

    def cell(self, value: float, sign: bool = False) -> str:
        """The figure in a table cell."""
        if self.table_decimals is None:
            return self.show(value)
        return f"{value:{'+' if sign else ''}.{self.table_decimals}f}"

    # the comparison with a baseline (only for metrics with a ``baseline`` rule)
    @property
    def marker(self) -> str:
        return self.baseline.marker

    @property
    def relative(self) -> bool:
        return self.baseline.relative

    @property
    def defaults(self) -> dict[str, float]:
        return self.baseline.defaults

    def show_tolerance(self, tolerance: float) -> str:
        return f"{100 * tolerance:g}%" if self.relative else f"{tolerance:g}{self.baseline.tolerance_unit}"


def _of(part: str, name: str) -> Callable[[Measurements], float | None]:
    def read(m: Measurements) -> float | None:
        obj = getattr(m, part)
        return None if obj is None else getattr(obj, name, None)

    return read


def delta_perplexity(m: Measurements) -> float | None:
    """Perplexity minus the reference's: the one computation of the figure (tables, baselines, gates)."""
    if m.quality is None or m.reference is None or m.reference.quality is None:
        return None
    return m.quality.perplexity - m.reference.quality.perplexity


def _reference_perplexity(m: Measurements) -> float | None:
    return None if m.reference is None else _of("quality", "perplexity")(m.reference)


def _roofline_percent(m: Measurements) -> float | None:
    return None if m.roofline_fraction is None else 100.0 * m.roofline_fraction


def _stat(name: str, relative: bool = False) -> Callable[[Measurements], float | None]:
    """A figure of the QualityStats; ``relative`` ones (against the reference) are not shown for the reference."""
    read = _of("stats", name)
    return (lambda m: None if m.is_reference else read(m)) if relative else read


def _generation(name: str) -> Callable[[Measurements], float | None]:
    return lambda m: None if m.generation is None else getattr(m.generation, name)


def _fixed(decimals: int, suffix: str = "", sign: bool = False) -> Callable[[float], str]:
    return lambda v: f"{v:{'+' if sign else ''}.{decimals}f}{suffix}"


def _stats_metrics() -> tuple[Metric, ...]:
    kl = _fixed(6, " nats")
    pp = _fixed(4, " points")
    out = [
        Metric("perplexity_se", "perplexity SE", "perplexity", None, 4, _stat("perplexity_se"), _fixed(4)),
        Metric("reference_perplexity_se", "reference perplexity SE", "perplexity", None, 4,
               _stat("reference_perplexity_se", relative=True), _fixed(4)),
        Metric("delta_perplexity_se", "Δ perplexity SE", "perplexity", None, 4,
               _stat("perplexity_difference_se", relative=True), _fixed(4)),
        Metric("ln_ppl_ratio", "ln(PPL/PPL reference)", "nats", False, 6, _stat("ln_perplexity_ratio", relative=True),
               _fixed(6)),
        Metric("ln_ppl_ratio_se", "ln(PPL/PPL reference) SE", "nats", None, 6,
               _stat("ln_perplexity_ratio_se", relative=True), _fixed(6)),
        Metric("ppl_ratio", "PPL/PPL reference", "ratio", False, 6, _stat("perplexity_ratio", relative=True), _fixed(6)),
        Metric("ppl_ratio_se", "PPL/PPL reference SE", "ratio", None, 6, _stat("perplexity_ratio_se", relative=True),
               _fixed(6)),
        Metric("ln_ppl_correlation", "Cor(ln PPL, ln PPL reference)", "correlation", None, 6,
               _stat("ln_perplexity_correlation", relative=True), _fixed(6)),
        Metric("mean_kl_se_nats", "mean KL SE", "nats", None, 6, _stat("mean_kl_se_nats", relative=True), kl),
        Metric("max_kl_nats", "max KL", "nats", False, 6, _stat("max_kl_nats", relative=True), kl),
    ]
    for name, percent in KL_PERCENTILES:
        if name != "p99":  # p99_kl_nats is above, from the evaluation itself
            out.append(Metric(f"{name}_kl_nats", f"{percent:g}th percentile KL" if name != "median" else "median KL",
                              "nats", False if percent >= 50 else None, 6, _stat(f"{name}_kl_nats", relative=True), kl))
    out.append(Metric("min_kl_nats", "min KL", "nats", None, 6, _stat("min_kl_nats", relative=True), kl))
    for name, label in (("mean_delta_p_percent", "mean Δp"), ("mean_delta_p_se_percent", "mean Δp SE"),
                        ("rms_delta_p_percent", "RMS Δp"), ("rms_delta_p_se_percent", "RMS Δp SE"),
                        ("max_delta_p_percent", "max Δp")):
        direction = False if name == "rms_delta_p_percent" else None
        out.append(Metric(name, label, "percentage points", direction, 4, _stat(name, relative=True), pp))
    for name, percent in DELTA_P_PERCENTILES:
        label = f"{percent:g}th percentile Δp" if name != "median" else "median Δp"
        out.append(Metric(f"{name}_delta_p_percent", label, "percentage points", None, 4,
                          _stat(f"{name}_delta_p_percent", relative=True), pp))
    out.append(Metric("min_delta_p_percent", "min Δp", "percentage points", None, 4,
                      _stat("min_delta_p_percent", relative=True), pp))
    out.append(Metric("top1_agreement_se_percent", "top-1 agreement SE", "percent", None, 3,
                      _stat("top1_agreement_se_percent", relative=True), _fixed(3, " points")))
    return tuple(out)


_STATS = _stats_metrics()


def _task(score: str, name: str, scale: float = 100.0, relative: bool = False) -> Callable[[Measurements], float | None]:
    """A figure of the paired task accuracy (measure.paired.PairedAccuracy) under ``score``."""
    def read(m: Measurements):
        if m.tasks is None or (relative and (m.is_reference or m.reference is None)):
            return None
        return scale * getattr(m.tasks.score(score), name)
    return read


def _task_metrics() -> tuple[Metric, ...]:
    out = [Metric("task_items", "task items", "items", None, 0, lambda m: None if m.tasks is None else m.tasks.items, str)]
    for score in ("acc", "acc_norm"):
        pct, pts = _fixed(2, "%"), _fixed(2, " points", sign=True)
        out += [Metric(f"task_{score}_percent", f"task {score}", "percent", True, 3, _task(score, "accuracy"), pct),
                Metric(f"task_{score}_se_percent", f"task {score} SE", "percent", None, 3, _task(score, "accuracy_se"), pct),
                Metric(f"reference_task_{score}_percent", f"reference task {score}", "percent", None, 3,
                       _task(score, "reference_accuracy", relative=True), pct),
                Metric(f"reference_task_{score}_se_percent", f"reference task {score} SE", "percent", None, 3,
                       _task(score, "reference_accuracy_se", relative=True), pct),
                Metric(f"task_{score}_difference_points", f"task {score} difference", "percentage points", True, 3,
                       _task(score, "difference", relative=True), pts),
                Metric(f"task_{score}_difference_se_points", f"task {score} difference SE (paired)", "percentage points",
                       None, 3, _task(score, "difference_se", relative=True), pts),
                Metric(f"task_{score}_lost_items", f"task {score} items lost", "items", None, 0,
                       _task(score, "losses", 1, relative=True), str),
                Metric(f"task_{score}_gained_items", f"task {score} items gained", "items", None, 0,
                       _task(score, "gains", 1, relative=True), str),
                Metric(f"task_{score}_mcnemar_p", f"task {score} McNemar exact p", "probability", None, 6,
                       _task(score, "mcnemar_p", 1, relative=True), _fixed(4))]
    finite = lambda v: v if v is not None and math.isfinite(v) else None  # an untouched layer: inf dB, not shown  # noqa: E731
    layer = lambda name: lambda m: finite(getattr(m.layers, name)) if getattr(m.layers, "layers", None) else None  # noqa: E731
    head = lambda m: finite(next((e.sqnr_db for e in getattr(m.layers, "layers", ()) if e.name == "lm_head"), None))  # noqa: E731
    out += [Metric("min_layer_sqnr_db", "lowest own layer SQNR", "dB", True, 3, layer("min_sqnr_db"), _fixed(1, " dB")),
            Metric("lm_head_sqnr_db", "lm_head own SQNR", "dB", True, 3, head, _fixed(1, " dB")),
            Metric("min_layer_cosine", "lowest own layer cosine", "cosine", True, 6, layer("min_cosine"), _fixed(5))]
    return tuple(out)

METRICS: tuple[Metric, ...] = (
    # What a deployer budgets: allocator memory the loaded model holds (GPU), the model footprint (CPU).
    Metric("vram_resident_bytes", "VRAM resident", "bytes", False, 0, _of("vram", "resident_bytes"), format_bytes),
    Metric("vram_generate_peak_bytes", "VRAM peak while generating", "bytes", False, 0,
           _of("vram", "generate_peak_bytes"), format_bytes),
    Metric("vram_footprint_bytes", "footprint", "bytes", False, 0, _of("vram", "footprint_bytes"), format_bytes),
    Metric("vram_language_bytes", "language part", "bytes", False, 0, _of("vram", "language_bytes"), format_bytes),
    Metric("vram_load_peak_bytes", "load peak", "bytes", None, 0, _of("vram", "load_peak_bytes"), format_bytes),
    Metric("vram_eval_peak_bytes", "evaluation peak", "bytes", None, 0, _of("vram", "eval_peak_bytes"), format_bytes),
    Metric("nvml_process_bytes", "NVML process", "bytes", None, 0, _of("vram", "nvml_process_bytes"), format_bytes),
    Metric("prefill_tokens_per_s", "prefill", "tokens/s", True, 2, _of("throughput", "prefill_tokens_per_s"),
           _fixed(1, " tok/s")),
    Metric("decode_tokens_per_s", "decode", "tokens/s", True, 1, _of("throughput", "decode_tokens_per_s"),
           _fixed(1, " tok/s")),
    Metric("decode_tokens_per_s_per_sequence", "decode per sequence", "tokens/s", True, 1,
           _of("throughput", "decode_tokens_per_s_per_sequence"), _fixed(1, " tok/s")),
    Metric("decode_batch_size", "decode batch", "sequences", None, 0, _of("throughput", "batch_size"), str),
    Metric("decode_spread_percent", "decode spread", "percent", None, 2, _of("throughput", "decode_spread_percent"),
           _fixed(2, "%")),
    Metric("decode_cv_percent", "decode CV", "percent", None, 2, _of("throughput", "decode_cv_percent"), _fixed(2, "%")),
    Metric("roofline_percent", "% of bandwidth bound", "percent", True, 3, _roofline_percent, _fixed(2, "%")),
    Metric("perplexity", "perplexity", "perplexity", False, 4, _of("quality", "perplexity"), _fixed(4)),
    Metric("reference_perplexity", "reference perplexity", "perplexity", None, 4, _reference_perplexity, _fixed(4)),
    Metric("delta_perplexity", "Δ perplexity", "perplexity", False, 4, delta_perplexity, _fixed(4, sign=True)),
    Metric("mean_kl_nats", "mean KL", "nats", False, 6, _of("quality", "mean_kl_nats"), _fixed(6, " nats")),
    Metric("p99_kl_nats", "99th percentile KL", "nats", False, 6, _of("quality", "p99_kl_nats"), _fixed(6, " nats")),
    Metric("top1_agreement_percent", "top-1 agreement", "percent", True, 3, _of("quality", "top1_agreement_percent"),
           _fixed(2, "%")),
    # llama.cpp's `perplexity --kl-divergence` set, from the same forward pass, with standard errors (_se)
    *_STATS,
    Metric("generation_exact_match_percent", "generations equal to the reference's", "percent", True, 2,
           _generation("exact_match_percent"), _fixed(2, "%")),
    Metric("generation_mean_prefix_tokens", "tokens before the first divergence", "tokens", True, 2,
           _generation("mean_prefix_tokens"), _fixed(2, " tokens")),
    Metric("generation_compared_tokens", "generated tokens compared", "tokens", None, 0,
           _generation("tokens_compared"), str),
    Metric("generation_prompts", "generation prompts", "prompts", None, 0, _generation("prompts"), str),
    Metric("generation_tokens", "generated tokens", "tokens", None, 0, _generation("generated_tokens"), str),
    Metric("generation_s", "generation", "seconds", None, 3, _generation("seconds"), _fixed(1, " s")),
    *_task_metrics(),
    Metric("eval_tokens", "eval tokens", "tokens", None, 0, _of("quality", "tokens_scored"), str),
    Metric("eval_batch_windows", "eval batch", "windows", None, 0, _of("quality", "eval_batch_windows"), str),
    Metric("eval_s", "evaluation", "seconds", None, 3, _of("quality", "seconds"), _fixed(1, " s")),
    Metric("import_s", "library import", "seconds", None, 3, lambda m: m.import_s, _fixed(1, " s")),
    Metric("load_s", "load", "seconds", None, 3, lambda m: m.load_s, _fixed(1, " s")),
    Metric("quantize_s", "quantization", "seconds", None, 3, lambda m: m.quantize_s or None, _fixed(1, " s")),
    Metric("timing_s", "timing", "seconds", None, 3, lambda m: m.timing_s, _fixed(1, " s")),
    Metric("release_s", "release", "seconds", None, 3, lambda m: m.release_s, _fixed(1, " s")),
    # torch.compile of the decode step (compiled mode): reported on its own, never counted as the plugin's overhead
    Metric("decode_compile_s", "decode step compile", "seconds", None, 3, _of("throughput", "compile_s"), _fixed(1, " s")),
)


def _rule(marker: str, relative: bool, tolerance_unit: str, cuda: float, cpu: float) -> BaselineRule:
    return BaselineRule(marker, relative, tolerance_unit, {"cuda": cuda, "cpu": cpu})


# Decimals shown in report tables and the terminal (files and baselines keep ``decimals``).
TABLE_DECIMALS = {"decode_tokens_per_s": 1, "decode_compile_s": 1, "roofline_percent": 2, "perplexity": 3, "delta_perplexity": 3,
                  "mean_kl_nats": 5, "p99_kl_nats": 4, "p999_kl_nats": 4, "max_kl_nats": 4, "rms_delta_p_percent": 3,
                  "top1_agreement_percent": 2, "generation_exact_match_percent": 1, "generation_mean_prefix_tokens": 1,
                  "task_acc_percent": 1, "reference_task_acc_percent": 1, "task_acc_difference_points": 1,
                  "min_layer_sqnr_db": 1}
# What a stored baseline compares, and with which default tolerance per device kind.
BASELINE_RULES = {
    # GPU decode is steady once warmed up and synchronised: 10% separates a real regression from
    # clock and scheduling jitter. CPU runners are shared 2-core machines: the repeats of one session
    # vary by 10-50% (coefficient of variation), and between sessions the median moves far more with
    # the neighbours' load. Eight back-to-back sessions on one such machine (load average 4-7) measured
    # the embedded model's reference decode at 3.6 to 269 tok/s and bnb-nf4 at 6.8 to 79 tok/s; every
    # CPU also shares the key "cpu". So on CPU the gate is only a tripwire for a tenfold slowdown, such
    # as a kernel falling back to a slow path: it fails below 10% of the baseline. A dedicated runner
    # can tighten it in the ini ("cpu: decode_tokens_per_s = 0.3").
    "decode_tokens_per_s": _rule("tokens_per_second", True, "", cuda=0.10, cpu=0.90),
    # Resident memory moves a little with library versions (quantization state, buffers); the CPU figure
    # is the model footprint, which only moves when the quantized layout does.
    "vram_resident_bytes": _rule("vram_budget", True, "", cuda=0.05, cpu=0.02),
    # Quality is deterministic on one machine; across machines and library versions reduction order
    # moves perplexity by about 1e-4 relative. These absolute margins sit well above that noise and
    # well below what a changed quantization recipe does.
    "perplexity": _rule("perplexity_delta", False, "", cuda=0.05, cpu=0.05),
    "mean_kl_nats": _rule("kl_divergence", False, " nats", cuda=0.001, cpu=0.001),
    "p99_kl_nats": _rule("kl_divergence", False, " nats", cuda=0.01, cpu=0.01),
    "top1_agreement_percent": _rule("kl_divergence", False, " points", cuda=0.5, cpu=0.5),
}
METRICS = tuple(dataclasses.replace(m, table_decimals=TABLE_DECIMALS.get(m.key), baseline=BASELINE_RULES.get(m.key))
                for m in METRICS)
METRIC: dict[str, Metric] = {m.key: m for m in METRICS}
# The metrics a baseline compares, in the order a marker's bare tolerance= reads them (its first is the default).
BASELINE_METRICS: tuple[Metric, ...] = tuple(METRIC[key] for key in BASELINE_RULES)
BASELINE_METRIC: dict[str, Metric] = {m.key: m for m in BASELINE_METRICS}
QUALITY_KEYS = frozenset({"perplexity", "mean_kl_nats", "p99_kl_nats", "top1_agreement_percent"})

def marker_metrics(marker: str) -> tuple[Metric, ...]:
    """The metrics a marker's vs="baseline" compares; the first is what a bare ``tolerance=`` sets."""
    return tuple(m for m in BASELINE_METRICS if m.marker == marker)
# Text fields every row carries, beside the metrics.
BY_DEVICE = "vram_resident_by_device"
TEXT_FIELDS = ("pair", "model", "recipe", "device", "kernel", "dtype", "hardware", "cache", "decode_mode",
               "decode_fallback")


def flat(m: Measurements) -> dict[str, Any]:
    """The text fields and every measured metric of ``m``, raw numbers at their fixed precision."""
    out: dict[str, Any] = {name: getattr(m, name) for name in TEXT_FIELDS}
    out = {k: v for k, v in out.items() if v not in (None, "")}
    for metric in METRICS:
        value = metric.value(m)
        if value is not None:
            out[metric.key] = value
    by_device = getattr(m.vram, "resident_bytes_by_device", None)
    if by_device:  # a model spread over GPUs: what each holds (vram_resident_bytes is their sum)
        out[BY_DEVICE] = ", ".join(f"{device} {format_bytes(n)}" for device, n in by_device.items())
    return out
