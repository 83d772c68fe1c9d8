"""The report's documents: what was run, then the table, as Markdown, JSON or HTML."""

from __future__ import annotations

import html
import shlex
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .. import __version__
from .columns import cells
from .properties import SAMPLE
from .rows import Rows
from .tasks import markdown_flips

TITLE = "pytest-quant report"
PLOT_TITLE = "Perplexity against memory, per recipe"


# -- what was run ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunInfo:
    started: datetime
    devices: tuple[str, ...] = ()
    hardware: tuple[str, ...] = ()
    eval_tokens: tuple[int, ...] = ()
    eval_text: str = ""
    args: tuple[str, ...] = ()
    version: str = __version__
    eval_batch_windows: tuple[int, ...] = ()  # windows per forward pass: LLM.int8's figures move with it

    @classmethod
    def of(cls, rows: Rows, *, started: datetime, device: str, eval_text: str = "", args=()) -> "RunInfo":
        def seen(key: str) -> tuple:
            return tuple(dict.fromkeys(r[key] for r in rows.pairs.values() if r.get(key) not in (None, "")))

        return cls(started, seen("device") or (device,), seen("hardware"), seen("eval_tokens"), eval_text, tuple(args),
                   eval_batch_windows=seen("eval_batch_windows"))

    def items(self) -> list[tuple[str, str]]:
        """(label, text) lines of the report's header."""
        out = [("date", self.started.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")),
               ("pytest-quant", self.version), ("device", ", ".join(self.devices))]
        if self.hardware:
            out.append(("hardware", ", ".join(self.hardware)))
        if self.eval_tokens:
            tokens = ", ".join(str(n) for n in self.eval_tokens)
            batch = ", ".join(str(n) for n in self.eval_batch_windows)
            batch = f", {batch} windows a batch" if batch else ""
            out.append(("eval tokens", (f"{tokens} of {self.eval_text}" if self.eval_text else tokens) + batch))
        if self.args:
            out.append(("command", "pytest " + shlex.join(self.args)))
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "started_utc": self.started.astimezone(timezone.utc).isoformat(timespec="seconds"),
            "pytest_quant_version": self.version,
            "devices": list(self.devices),
            "hardware": list(self.hardware),
            "eval_tokens": list(self.eval_tokens),
            "eval_text": self.eval_text,
            "eval_batch_windows": list(self.eval_batch_windows),
            "args": list(self.args),
        }


# -- the documents --------------------------------------------------------------------------------
def generation_samples(rows: Rows) -> list[tuple[str, str, Any, list[tuple[str, str]]]]:
    """Per model: the first prompt, the tokens compared, and (recipe, output) with the reference's first."""
    out = []
    for model in dict.fromkeys(r.get("model") for r in rows.pairs.values()):
        mine = [r for r in rows.pairs.values() if r.get("model") == model and isinstance(r.get(SAMPLE), dict)]
        if mine:
            first = mine[0][SAMPLE]
            outputs = [("reference", first["reference"])]
            outputs += [(r["recipe"], r[SAMPLE]["output"]) for r in mine if r.get("recipe") != "reference"]
            out.append((model, first["prompt"], mine[0].get("generation_compared_tokens", "?"), outputs))
    return out


def markdown_table(rows: Rows) -> list[str]:
    header, body, columns = cells(rows.pairs)
    align = ["---" if c.text else "---:" for c in columns]
    line = lambda r: "| " + " | ".join(c.replace("|", "\\|") for c in r) + " |"  # noqa: E731
    return [line(header), line(align), *map(line, body)]


def markdown(rows: Rows, info: RunInfo, plot_name: str | None = None, plot_note: str | None = None) -> str:
    lines = [f"# {TITLE}", ""]
    lines += [f"- **{label}**: {text if label != 'command' else f'`{text}`'}" for label, text in info.items()]
    lines += ["", *markdown_table(rows), ""]
    if not rows.pairs:
        lines += ["No model x recipe was measured.", ""]
    for model, prompt, tokens, outputs in generation_samples(rows):
        cell = lambda t: t.replace("|", "\\|").replace("\n", " ↵ ")  # noqa: E731
        lines += [f"### {model}: greedy outputs, first {tokens} tokens", "", f"Prompt: {cell(prompt)}", "",
                  "| recipe | output |", "| --- | --- |", *(f"| {r} | {cell(t)} |" for r, t in outputs), ""]
    lines += markdown_flips(rows)
    if plot_name:
        lines += [f"![{PLOT_TITLE}]({plot_name})", ""]
    elif plot_note:
        lines += [f"_{plot_note}_", ""]
    return "\n".join(lines)


def json_document(rows: Rows, info: RunInfo, plot_name: str | None = None) -> dict[str, Any]:
    """Raw numbers, units in the key names (``vram_resident_bytes``, ``decode_tokens_per_s``, ``mean_kl_nats``)."""
    results = []
    for row in rows.pairs.values():
        result = {k: v for k, v in row.items() if k not in ("pair", "result")}
        result["result"] = row.get("result", "pass").lower()
        results.append(result)
    return {"format": "pytest-quant-report", "format_version": 1, "run": info.as_json(),
            "results": results, "plot": plot_name}


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;max-width:80rem;margin:2rem auto;padding:0 1rem}
h1{font-size:1.5rem;margin:0 0 1rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:0 0 1.5rem}
dt{color:#59636e}dd{margin:0}code{font-size:.9em}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin-bottom:1.5rem}
th,td{padding:.35rem .75rem;border-bottom:1px solid #d1d9e0;text-align:left;white-space:nowrap}
th{background:#f6f8fa}.num{text-align:right}
td.pass{color:#1a7f37;font-weight:600}td.fail{color:#d1242f;font-weight:600}tr.fail td{background:#fff0ee}
td.out{white-space:pre-wrap;max-width:50rem}
figure{margin:0}figure svg{max-width:100%;height:auto}figcaption{color:#59636e}
""".strip()


def html_document(rows: Rows, info: RunInfo, svg: str | None = None, plot_note: str | None = None) -> str:
    """A page that needs nothing else: inline CSS, the plot as inline SVG."""
    esc = html.escape
    header, body, columns = cells(rows.pairs)
    kinds = ["" if c.text else "num" for c in columns]
    th = "".join(f'<th class="{k}">{esc(h)}</th>' if k else f"<th>{esc(h)}</th>" for h, k in zip(header, kinds))
    trs = []
    for r in body:
        result = r[-1].lower()
        tds = "".join(f'<td class="{k}">{esc(c)}</td>' if k else f"<td>{esc(c)}</td>" for c, k in zip(r[:-1], kinds))
        trs.append(f'<tr class="{result}">{tds}<td class="{result}">{esc(r[-1])}</td></tr>')
    dl = "".join(f"<dt>{esc(label)}</dt><dd>{f'<code>{esc(text)}</code>' if label == 'command' else esc(text)}</dd>"
                 for label, text in info.items())
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{TITLE}</title><style>{_CSS}</style></head><body>",
        f"<h1>{TITLE}</h1>", f"<dl>{dl}</dl>",
        f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(trs)}</tbody></table>",
    ]
    if not rows.pairs:
        parts.append("<p>No model x recipe was measured.</p>")
    for model, prompt, tokens, outputs in generation_samples(rows):
        trs = "".join(f"<tr><td>{esc(r)}</td><td class=\"out\">{esc(t)}</td></tr>" for r, t in outputs)
        parts += [f"<h2>{esc(model)}: greedy outputs, first {tokens} tokens</h2>", f"<p>Prompt: {esc(prompt)}</p>",
                  f"<table><thead><tr><th>recipe</th><th>output</th></tr></thead><tbody>{trs}</tbody></table>"]
    if svg:
        parts.append(f"<figure>{svg}<figcaption>{esc(PLOT_TITLE)}</figcaption></figure>")
    elif plot_note:
        parts.append(f"<p><em>{esc(plot_note)}</em></p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
