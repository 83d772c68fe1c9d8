"""The report's task section: per recipe, the first task items it answered differently from the reference, side
by side (from the ``quant.task_flips`` property, so that it works from xdist workers' reports too)."""

from __future__ import annotations

from .properties import FLIPS
from .rows import Rows


def flipped_items(rows: Rows) -> list[tuple[str, str, list[dict]]]:
    """(model, recipe, flipped items) for every row that has some."""
    return [(r.get("model", "?"), r.get("recipe", "?"), r[FLIPS]) for r in rows.pairs.values()
            if isinstance(r.get(FLIPS), list) and r[FLIPS]]


def markdown_flips(rows: Rows) -> list[str]:
    cell = lambda t: str(t).replace("|", "\\|").replace("\n", " ↵ ")  # noqa: E731
    lines: list[str] = []
    for model, recipe, flips in flipped_items(rows):
        lines += [f"### {model} {recipe}: the first task items answered differently from the reference", "",
                  "| item | question | answer | reference | " + recipe + " |", "| --- | --- | --- | --- | --- |"]
        short = lambda q: "…" + q[-80:] if len(q) > 80 else q  # noqa: E731 - the passage's end, before its answer
        lines += [f"| {cell(f['source'])} | {cell(short(f['question']))} | {cell(f['expected'])} | "
                  f"{cell(f['reference'])} | {cell(f['model'])} ({'lost' if f['lost'] else 'gained'}) |" for f in flips]
        lines.append("")
    return lines
