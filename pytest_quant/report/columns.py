"""The one table of columns: the terminal summary and every report file read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..metrics import METRIC


@dataclass(frozen=True)
class Column:
    key: str  # the row key (a metric key of pytest_quant.metrics, or a text field)
    title: str  # in report files
    short: str  # in the terminal
    text: bool = False  # left-aligned words, not a number
    terminal: bool = True  # the terminal keeps its width: some columns are in the files only
    se: str | None = None  # the row key of its standard error, shown after it as "±SE" (two significant digits)
    optional: bool = False  # shown only when some row has it
    sign: bool = False  # a difference: always signed

    def format(self, value: Any) -> str:
        """A metric's cell as the metric table formats it; a text field as it is."""
        metric = METRIC.get(self.key)
        return str(value) if self.text or metric is None else metric.cell(value, sign=self.sign)


COLUMNS: tuple[Column, ...] = (
    Column("model", "model", "model", text=True),
    Column("recipe", "recipe", "recipe", text=True),
    Column("device", "device", "device", text=True),
    Column("kernel", "kernel", "kernel", text=True),
    Column("vram_resident_bytes", "VRAM resident (CPU: footprint)", "VRAM"),
    # image-text-to-text models only: what their language part (decoder and head) holds of the VRAM column's whole model
    Column("vram_language_bytes", "language part of it", "LM part", optional=True),
    # models spread over GPUs (--quant-device auto) only
    Column("vram_resident_by_device", "VRAM resident per GPU", "per GPU", text=True, terminal=False, optional=True),
    Column("vram_generate_peak_bytes", "VRAM peak generating", "gen peak", terminal=False),
    Column("decode_tokens_per_s", "decode tok/s", "decode tok/s"),
    Column("decode_mode", "decode mode", "mode", text=True),
    Column("decode_fallback", "why not the mode asked for", "fallback", text=True, terminal=False, optional=True),
    Column("decode_compile_s", "decode compile (s)", "compile s", terminal=False, optional=True),
    Column("roofline_percent", "% of bandwidth bound", "roofline %"),
    Column("perplexity", "perplexity", "ppl", se="perplexity_se"),
    # the paired SE: far below the perplexities' own, as both models stumble on the same tokens
    Column("delta_perplexity", "Δ perplexity", "Δppl", se="delta_perplexity_se", sign=True),
    Column("mean_kl_nats", "mean KL (nats)", "mean KL", se="mean_kl_se_nats"),
    Column("p99_kl_nats", "p99 KL (nats)", "p99 KL", terminal=False),
    Column("p999_kl_nats", "p99.9 KL (nats)", "p99.9 KL", terminal=False),
    Column("max_kl_nats", "max KL (nats)", "max KL", terminal=False),
    Column("rms_delta_p_percent", "RMS Δp (points)", "RMS Δp", terminal=False, se="rms_delta_p_se_percent"),
    Column("top1_agreement_percent", "top-1 %", "top-1 %", se="top1_agreement_se_percent"),
    Column("generation_exact_match_percent", "generations equal %", "gen =%", terminal=False),
    Column("generation_mean_prefix_tokens", "tokens to divergence", "gen prefix", terminal=False),
    # task_accuracy (score acc): both models' accuracy, the paired difference, the items flipped each way
    Column("reference_task_acc_percent", "reference task acc %", "ref task %", terminal=False, optional=True,
           se="reference_task_acc_se_percent"),
    Column("task_acc_percent", "task acc %", "task %", terminal=False, optional=True, se="task_acc_se_percent"),
    Column("task_acc_difference_points", "Δ task acc (points, paired SE)", "Δtask", optional=True,
           se="task_acc_difference_se_points", sign=True),
    Column("task_acc_lost_items", "items lost", "lost", terminal=False, optional=True),
    Column("task_acc_gained_items", "items gained", "gained", terminal=False, optional=True),
    # layer errors: the lowest own SQNR of a decoder layer or the lm_head
    Column("min_layer_sqnr_db", "lowest layer SQNR (dB)", "layer dB", optional=True),
    # a GPU kind with no baselines of its own: whose quality baselines gated it
    Column("baseline_from", "quality baseline from", "baseline", text=True, terminal=False, optional=True),
    Column("result", "result", "result", text=True),
)


def cells(rows: dict[str, dict[str, Any]], terminal: bool = False) -> tuple[list[str], list[list[str]], list[Column]]:
    """The header, one row of formatted cells per model x recipe ("-": not measured), and the columns used."""
    columns = [c for c in COLUMNS if (c.terminal or not terminal)
               and not (c.optional and all(row.get(c.key) in (None, "") for row in rows.values()))]
    header = [c.short if terminal else c.title for c in columns]
    body = [[_cell(c, row) for c in columns] for row in rows.values()]
    return header, body, columns


def _cell(column: Column, row: dict[str, Any]) -> str:
    value = row.get(column.key)
    if value in (None, ""):
        return "-"
    se = row.get(column.se) if column.se else None
    return column.format(value) + (f"±{se:.2g}" if isinstance(se, (int, float)) and se > 0 else "")
