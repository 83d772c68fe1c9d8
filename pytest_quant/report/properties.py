"""Measurements as ``quant.*`` test properties (junit XML, xdist), and the failure detail section."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..metrics import Measurements, flat
from ..units import format_bytes

PREFIX = "quant."
RELEASED = "released"  # {pair id: release seconds} of the models a setup or teardown phase released


SAMPLE = "generation_sample"
FLIPS = "task_flips"  # the first task items answered differently from the reference (score acc), side by side
LAYER_SQNR = "layer_sqnr_db"  # per decoder layer and lm_head: [own SQNR, cumulative SQNR] in dB (None: unchanged)


def properties(m: Measurements) -> list[tuple[str, Any]]:
    """Flat ``quant.*`` properties of one model x recipe: what has been measured so far, and the first prompt's
    generations beside the reference's (``quant.generation_sample``), for the report's side-by-side table."""
    out = [(PREFIX + k, v) for k, v in flat(m).items()]
    if m.generation is not None and m.generation.samples:
        prompt, reference, output = m.generation.samples[0]
        out.append((PREFIX + SAMPLE, {"prompt": prompt, "reference": reference, "output": output}))
    if m.tasks is not None and not m.is_reference and m.tasks.flips.get("acc"):
        out.append((PREFIX + FLIPS, [dataclasses.asdict(f) for f in m.tasks.flips["acc"]]))
    if m.layers is not None and m.layers.layers:
        shown = lambda v: round(v, 3) if math.isfinite(v) else None  # noqa: E731
        out.append((PREFIX + LAYER_SQNR, {e.name: [shown(e.sqnr_db), shown(e.cumulative_sqnr_db)] for e in m.layers.layers}))
    return out


def detail(m: Measurements) -> str:
    """The detail section of a failed gate: every metric known for the pair and its reference."""
    lines = [f"{k}: {v}" for k, v in flat(m).items()]
    ref = m.reference
    if ref is not None:
        if ref.vram is not None:
            lines.append(f"reference vram_resident_bytes: {ref.vram.resident_bytes} ({format_bytes(ref.vram.resident_bytes)})")
        if ref.throughput is not None:
            lines.append(f"reference decode_tokens_per_s: {ref.throughput.decode_tokens_per_s:.2f}")
    return "\n".join(lines)
