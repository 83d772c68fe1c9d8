"""``--quant-report`` and GitHub's step summary: written once, atomically, by the process that has every row
(the xdist controller, or the only process)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import pytest

from ..atomic import atomic_write
from .documents import TITLE, RunInfo, html_document, json_document, markdown, markdown_table
from .plot import render_plot
from .rows import Rows

SUFFIXES = (".md", ".json", ".html")
STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


def report_path(value: Path | None, base: Path) -> Path | None:
    """The report file, absolute against the invocation directory; a usage error for other suffixes."""
    if value is None:
        return None
    if value.suffix.lower() not in SUFFIXES:
        raise pytest.UsageError(
            f"--quant-report {str(value)!r}: unsupported suffix {value.suffix or '(none)'!r}; "
            f"accepted: {', '.join(SUFFIXES)}"
        )
    return value if value.is_absolute() else base / value


def write_report(path: Path, rows: Rows, info: RunInfo) -> list[str]:
    """Write the report (its format from the suffix) and the plot ``<stem>.png`` beside it; the terminal lines."""
    kind = path.suffix.lower()
    plot = render_plot(rows, path.with_suffix(".png"), svg=kind == ".html")
    plot_name = plot.png.name if plot.png else None
    if kind == ".md":
        text = markdown(rows, info, plot_name, plot.note)
    elif kind == ".json":
        text = json.dumps(json_document(rows, info, plot_name), indent=2, ensure_ascii=False, default=str) + "\n"
    elif kind == ".html":
        text = html_document(rows, info, plot.svg, plot.note)
    else:
        raise ValueError(f"{path}: unsupported suffix; accepted: {', '.join(SUFFIXES)}")
    atomic_write(path, text)
    lines = [f"pytest-quant report: {plot.note}"] if plot.note else []
    return lines + [f"pytest-quant report: {path}" + (f" (plot: {plot.png})" if plot.png else "")]


def append_step_summary(rows: Rows, info: RunInfo, environ: Mapping[str, str] = os.environ) -> Path | None:
    """Append the Markdown table to the file GitHub Actions names in ``$GITHUB_STEP_SUMMARY``."""
    target = environ.get(STEP_SUMMARY_ENV)
    if not target or not rows.pairs:
        return None
    header = " · ".join(f"{label} {text}" for label, text in info.items() if label in ("device", "hardware", "eval tokens"))
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write("\n".join([f"### {TITLE}", "", header, "", *markdown_table(rows), "", ""]))
    return path


class ReportFiles:
    """The session's ``--quant-report`` and step summary, written once by the process that has every row:
    the xdist controller, or the only process without xdist (workers have ``config.workerinput``)."""

    def __init__(self, config: pytest.Config, options) -> None:
        self.config = config
        self.options = options
        self.path = report_path(options.report, config.invocation_params.dir)
        self.started = datetime.now(timezone.utc)

    def write(self, rows: Rows) -> list[str]:
        if hasattr(self.config, "workerinput"):
            return []
        eval_text = Path(self.options.eval_text).name if self.options.eval_text else ""
        info = RunInfo.of(rows, started=self.started, device=self.options.device, eval_text=eval_text,
                          args=self.config.invocation_params.args)
        lines = []
        try:
            append_step_summary(rows, info)
        except OSError as exc:
            lines.append(f"pytest-quant report: could not append to ${STEP_SUMMARY_ENV}: {exc}")
        if self.path is not None:
            try:
                lines += write_report(self.path, rows, info)
            except OSError as exc:
                lines.append(f"pytest-quant report: could not write {self.path}: {exc}")
        return lines
