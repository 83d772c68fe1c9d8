"""The memory and speed markers' pure checks: vram_budget and tokens_per_second."""

from __future__ import annotations

import math

from ..metrics import Measurements
from ..units import format_bytes
from .limits import Limits, Violation

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
    if budget is not None and not peak <= budget:  # NaN never passes
        out.append(Violation("vram_budget", f"VRAM budget {format_bytes(budget)} exceeded: {what} {format_bytes(peak)} "
                             f"({_pct(peak, budget)}) {m.where}", peak, budget, "bytes"))
    ratio = limits.values.get("ratio")
    if ratio is not None:
        ref, _ = _vram_figure(m.reference, phase)
        measured = peak / ref
        if not measured <= ratio:
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
    if floor is not None and not tps >= floor:
        out.append(Violation("tokens_per_second", f"decode {tps:.1f} tok/s{at} below floor {floor:g} tok/s "
                             f"({_pct(tps, floor)}, {t.decode_mode}) {m.where}", tps, floor, "tokens/s"))
    ratio = limits.values.get("min_ratio")
    if ratio is not None:
        timed = m.reference.throughput_at(batch, t.decode_mode)
        if timed is None:
            out.append(Violation("tokens_per_second", f"decode timed in {t.decode_mode} mode{at}, and the reference was "
                                 f"not: min_ratio compares figures of one mode {m.where}", math.nan, ratio, "ratio"))
            return out
        ref = timed.decode_tokens_per_s
        measured = tps / ref
        if not measured >= ratio:
            out.append(Violation("tokens_per_second", f"decode {tps:.1f} tok/s{at} is {measured:.3f} x reference "
                                 f"{ref:.1f} tok/s, below min_ratio {ratio:g} {m.where}", measured, ratio, "ratio"))
    return out
