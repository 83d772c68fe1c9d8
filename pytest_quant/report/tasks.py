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
        lines += [f"| {cell(f['source'])} | {cell(('…' + f['question'][-80:]) if len(f['question']) > 80 else f['question'])} | {cell(f['expected'])} | {cell(f['reference'])} "
                  f"| {cell(f['model'])} ({'lost' if f['lost'] else 'gained'}) |" for f in flips]
        lines.append("")
    return lines
