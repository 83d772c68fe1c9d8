"""``--quant-report`` and GitHub's step summary: written once, atomically, by the process that has every row
(the xdist controller, or the only process).

A report that cannot be written (a full disk, a folder made read-only during the run) must not leave the
previous run's file where CI uploads it as this run's: that file (and its plot) is removed, a line says so,
and under --quant-strict the session fails (exit 1)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import pytest

from ..atomic import atomic_write
from .documents import TITLE, RunInfo, html_document, json_document, markdown, markdown_table
from .layer_plot import layer_plot_path, render_layer_plot
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
    """Write the report (its format from the suffix), the plot ``<stem>.png`` and the per-layer SQNR plot
    ``<stem>-layers.png`` (where layers were measured) beside it; the terminal lines."""
    kind = path.suffix.lower()
    plot = render_plot(rows, path.with_suffix(".png"), svg=kind == ".html")
    plot_name = plot.png.name if plot.png else None
    layers = render_layer_plot(rows, layer_plot_path(path))
    if kind == ".md":
        text = markdown(rows, info, plot_name, plot.note)
        text += f"\n![SQNR per layer]({layers.name})\n" if layers else ""
    elif kind == ".json":
        document = json_document(rows, info, plot_name)
        document["layer_plot"] = layers.name if layers else None
        text = json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n"
    elif kind == ".html":
        text = html_document(rows, info, plot.svg, plot.note)
    else:
        raise ValueError(f"{path}: unsupported suffix; accepted: {', '.join(SUFFIXES)}")
    atomic_write(path, text)
    lines = [f"pytest-quant report: {plot.note}"] if plot.note else []
    lines.append(f"pytest-quant report: {path}" + (f" (plot: {plot.png})" if plot.png else ""))
    return lines + ([f"pytest-quant report: the per-layer SQNR plot: {layers}"] if layers else [])


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


def remove_stale(path: Path) -> list[str]:
    """Remove a previous run's report and its plot beside it; what could not be removed, as text."""
    left = []
    for stale in (path, path.with_suffix(".png"), layer_plot_path(path)):
        try:
            stale.unlink(missing_ok=True)
        except OSError as exc:
            left.append(f"{stale} ({exc.strerror or exc})")
    return left


class StrictExit:
    """Fails the session (exit 1) under --quant-strict when the report could not be written. A wrapper of
    ``pytest_sessionfinish`` run outermost, so it sees what the terminal summary (which writes the report)
    left; pytest returns ``session.exitstatus`` as set here."""

    def __init__(self, files: "ReportFiles") -> None:
        self.files = files

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session):
        result = yield
        if self.files.failure and self.files.options.strict and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return result


class ReportFiles:
    """The session's ``--quant-report`` and step summary, written once by the process that has every row:
    the xdist controller, or the only process without xdist (workers have ``config.workerinput``)."""

    STATUS_PLUGIN = "quant-report-status"

    def __init__(self, config: pytest.Config, options) -> None:
        self.config = config
        self.options = options
        self.path = report_path(options.report, config.invocation_params.dir)
        self.started = datetime.now(timezone.utc)
        self.failure: str | None = None  # why the report could not be written
        manager = getattr(config, "pluginmanager", None)
        if self.path is not None and manager is not None and not manager.has_plugin(self.STATUS_PLUGIN):
            manager.register(StrictExit(self), self.STATUS_PLUGIN)

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
                lines += self.unwritten(exc)
        return lines

    def unwritten(self, exc: OSError) -> list[str]:
        """Remove the previous run's report so it is not taken for this run's; the lines that say so."""
        self.failure = f"could not write {self.path}: {exc}"
        left = remove_stale(self.path)
        then = (f"the previous run's file could not be removed either and is stale: {', '.join(left)}" if left
                else "no report of an earlier run is left in its place")
        strict = ("; the session fails (--quant-strict)" if self.options.strict
                  else "; pass --quant-strict to fail the session when this happens")
        return [f"pytest-quant report: {self.failure}; {then}{strict}"]
