"""Metrics as report properties (junit, xdist), the failure detail section, and the summary table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .hardware import hardware_name
from .options import format_bytes

PREFIX = "quant."


def properties(metrics, state) -> list[tuple[str, Any]]:
    """Flat ``quant.*`` properties of one model x recipe: what has been measured so far."""
    props: dict[str, Any] = {
        "pair": f"{metrics.model}-{metrics.recipe}",
        "model": metrics.model,
        "recipe": metrics.recipe,
        "device": metrics.device,
        "kernel": state.kernel,
        "dtype": state.dtype,
        "hardware": hardware_name(metrics.device),
    }
    if state.load_seconds is not None:
        props["load_s"] = round(state.load_seconds, 3)
    if state.quantize_seconds:
        props["quantize_s"] = round(state.quantize_seconds, 3)
    if state.cache:
        props["cache"] = state.cache
    if metrics.vram is not None:
        props["vram_peak_bytes"] = metrics.vram.peak_bytes
        props["vram_footprint_bytes"] = metrics.vram.footprint_bytes
        if metrics.vram.load_peak_bytes is not None:
            props["vram_load_peak_bytes"] = metrics.vram.load_peak_bytes
        if metrics.vram.nvml_process_bytes is not None:
            props["nvml_process_bytes"] = metrics.vram.nvml_process_bytes
    if state.timing_seconds is not None:
        props["timing_s"] = round(state.timing_seconds, 3)
    if state.roofline_fraction is not None:
        props["roofline_percent"] = round(100 * state.roofline_fraction, 3)
    if metrics.throughput is not None:
        t = metrics.throughput
        props.update(
            prefill_tokens_per_s=round(t.prefill_tokens_per_s, 2),
            decode_tokens_per_s=round(t.decode_tokens_per_s, 2),
            decode_spread_percent=round(t.decode_spread_percent, 2),
            decode_cv_percent=round(t.decode_cv_percent, 2),
        )
    if metrics.quality is not None:
        q = metrics.quality
        props["perplexity"] = round(q.perplexity, 4)
        props["eval_s"] = round(q.seconds, 3)
        props["eval_tokens"] = q.tokens_scored
        if q.mean_kl_nats is not None:
            props.update(
                mean_kl_nats=round(q.mean_kl_nats, 6),
                p99_kl_nats=round(q.p99_kl_nats, 6),
                top1_agreement_percent=round(q.top1_agreement_percent, 3),
            )
        ref = metrics.reference
        if ref is not None and ref.quality is not None:
            props["reference_perplexity"] = round(ref.quality.perplexity, 4)
            props["delta_perplexity"] = round(q.perplexity - ref.quality.perplexity, 4)
    return [(PREFIX + k, v) for k, v in props.items()]


def detail(metrics, state) -> str:
    """The detail section of a failed gate: every metric known for the pair and its reference."""
    lines = [f"{k.removeprefix(PREFIX)}: {v}" for k, v in properties(metrics, state)]
    ref = metrics.reference
    if ref is not None:
        if ref.vram is not None:
            lines.append(f"reference vram_peak_bytes: {ref.vram.peak_bytes} ({format_bytes(ref.vram.peak_bytes)})")
        if ref.throughput is not None:
            lines.append(f"reference decode_tokens_per_s: {ref.throughput.decode_tokens_per_s:.2f}")
    return "\n".join(lines)


@dataclass
class Rows:
    """One row per model x recipe, merged from every test report that carried its properties."""

    pairs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, report) -> None:
        props = {k.removeprefix(PREFIX): v for k, v in getattr(report, "user_properties", ()) if k.startswith(PREFIX)}
        if "pair" not in props:
            return
        row = self.pairs.setdefault(props["pair"], {"result": "pass"})
        row.update(props)
        if report.failed:
            row["result"] = "FAIL"


COLUMNS = (
    ("model", "model", str),
    ("recipe", "recipe", str),
    ("device", "device", str),
    ("kernel", "kernel", str),
    ("VRAM", "vram_peak_bytes", format_bytes),
    ("decode tok/s", "decode_tokens_per_s", lambda v: f"{v:.1f}"),
    ("roofline %", "roofline_percent", lambda v: f"{v:.2f}"),
    ("ppl", "perplexity", lambda v: f"{v:.3f}"),
    ("Δppl", "delta_perplexity", lambda v: f"{v:+.3f}"),
    ("mean KL", "mean_kl_nats", lambda v: f"{v:.5f}"),
    ("top-1 %", "top1_agreement_percent", lambda v: f"{v:.2f}"),
    ("result", "result", str),
)


def cells(rows: Rows) -> tuple[list[str], list[list[str]]]:
    header = [title for title, _, _ in COLUMNS]
    body = [
        [fmt(row[key]) if row.get(key) not in (None, "") else "-" for _, key, fmt in COLUMNS]
        for row in rows.pairs.values()
    ]
    return header, body


def table(rows: Rows) -> list[str]:
    header, body = cells(rows)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(header), "  ".join("-" * w for w in widths), *map(fmt, body)]
