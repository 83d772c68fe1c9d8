"""pytest_quant.report.layer_plot: the per-layer SQNR figure beside the report, one line per recipe."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from pytest_quant.report import files as report_files
from pytest_quant.report.documents import RunInfo
from pytest_quant.report.layer_plot import layer_figure, layer_plot_path, layer_rows
from pytest_quant.report.rows import Rows

pytest.importorskip("matplotlib")
LAYERS = {"bnb-nf4": {"layers.0": [21.6, 21.6], "layers.1": [24.0, 19.8], "lm_head": [None, 19.0]},
          "broken-middle": {"layers.0": [None, None], "layers.1": [15.3, 15.3], "lm_head": [None, 15.1]}}


def _rows(layers=LAYERS) -> Rows:
    rows = Rows()
    for recipe, sqnr in {"reference": None, **layers}.items():
        props = {"pair": f"tiny-{recipe}", "model": "tiny", "recipe": recipe, "device": "cpu"}
        if sqnr is not None:
            props["layer_sqnr_db"] = sqnr
        rows.add(SimpleNamespace(user_properties=[(f"quant.{k}", v) for k, v in props.items()], failed=False,
                                 skipped=False))
    return rows


def test_one_line_per_recipe_over_its_layers():
    fig = layer_figure(_rows())
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["bnb-nf4", "broken-middle"]
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert list(lines["broken-middle"].get_ydata())[1] == 15.3
    unchanged = max(21.6, 24.0, 15.3) + 6.0  # an identical layer sits on the top row
    assert list(lines["broken-middle"].get_ydata())[0] == unchanged == list(lines["bnb-nf4"].get_ydata())[2]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["layers.0", "layers.1", "lm_head"]
    assert layer_rows(_rows({})) == {} and layer_figure(_rows({})) is None


@pytest.mark.parametrize("suffix", [".md", ".json"])
def test_the_report_writes_the_figure_beside_itself_and_names_it(tmp_path, suffix):
    rows = _rows()
    info = RunInfo.of(rows, started=datetime(2025, 3, 4, tzinfo=timezone.utc), device="cpu")
    report = tmp_path / f"r{suffix}"
    lines = report_files.write_report(report, rows, info)
    png = layer_plot_path(report)
    assert png.name == "r-layers.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert lines[-2].startswith(f"pytest-quant report: {report}") and lines[-1] == (
        f"pytest-quant report: the per-layer SQNR plot: {png}")
    text = report.read_text()
    assert ("![SQNR per layer](r-layers.png)" in text if suffix == ".md" else
            json.loads(text)["layer_plot"] == "r-layers.png")
    report_files.remove_stale(report)
    assert not png.exists() and not report.exists()


def test_no_layers_no_figure(tmp_path):
    rows = _rows({})
    info = RunInfo.of(rows, started=datetime(2025, 3, 4, tzinfo=timezone.utc), device="cpu")
    report_files.write_report(tmp_path / "r.md", rows, info)
    assert not layer_plot_path(tmp_path / "r.md").exists()
