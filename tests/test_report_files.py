"""--quant-report: the writers on rows built from fake reports, the plot files, the step summary, the
start-up check of the suffix, and real runs (in-process, and under xdist) that write a report."""

from __future__ import annotations

import json
import os
import re
import struct
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_quant import __version__
from pytest_quant.atomic import atomic_write
from pytest_quant.report import files as report_files, plot as report_plot
from pytest_quant.report.documents import RunInfo
from pytest_quant.report.rows import Rows
from pytest_quant.units import format_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REF = dict(model="tiny", recipe="reference", device="cpu", kernel="Linear", dtype="float32", hardware="Test CPU 9000",
           vram_resident_bytes=28_849_408, decode_tokens_per_s=61.25, perplexity=148.1137, eval_tokens=512,
           mean_kl_nats=0.0, p99_kl_nats=0.0, top1_agreement_percent=100.0)
NF4 = dict(REF, recipe="bnb-nf4", kernel="Linear4bit", vram_resident_bytes=9_437_184, decode_tokens_per_s=22.5,
           perplexity=149.4779, mean_kl_nats=0.009802, p99_kl_nats=0.035589, top1_agreement_percent=93.555,
           reference_perplexity=148.1137, delta_perplexity=1.3642)
INT8 = dict(NF4, recipe="bnb-int8", kernel="Linear8bitLt", vram_resident_bytes=14_680_064, decode_tokens_per_s=8.75,
            perplexity=148.2001, mean_kl_nats=0.0011, p99_kl_nats=0.0052, top1_agreement_percent=98.4,
            delta_perplexity=0.0864)


def fake_report(props: dict, failed: bool = False) -> SimpleNamespace:
    pair = f"{props['model']}-{props['recipe']}"
    return SimpleNamespace(user_properties=[("quant.pair", pair), *((f"quant.{k}", v) for k, v in props.items())],
                           failed=failed, skipped=False)


def make_rows(*specs: tuple[dict, bool]) -> Rows:
    rows = Rows()
    for props, failed in specs:
        rows.add(fake_report(props, failed))
    return rows


@pytest.fixture
def rows() -> Rows:
    return make_rows((REF, False), (NF4, False), (INT8, True))


@pytest.fixture
def info(rows: Rows) -> RunInfo:
    return RunInfo.of(rows, started=datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc), device="cpu",
                      eval_text="eval.txt", args=("--quant-report", "r.md"))


def expected_cells(props: dict, result: str) -> list[str]:
    """The report's cells for one row, formatted here independently of the writers."""
    delta = props.get("delta_perplexity")
    return [props["model"], props["recipe"], props["device"], props["kernel"], format_bytes(props["vram_resident_bytes"]),
            "-",  # VRAM peak while generating: not in these rows
            f"{props['decode_tokens_per_s']:.1f}", props.get("decode_mode", "-"),
            f"{props['roofline_percent']:.2f}" if props.get("roofline_percent") is not None else "-",
            f"{props['perplexity']:.3f}",
            f"{delta:+.3f}" if delta is not None else "-", f"{props['mean_kl_nats']:.5f}",
            f"{props['p99_kl_nats']:.4f}", "-", "-", "-",  # p99.9 KL, max KL, RMS Δp: not in these rows
            f"{props['top1_agreement_percent']:.2f}", "-", "-", result]  # no generation agreement either


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def svg_texts(svg: str) -> list[str]:
    return [re.sub(r"\s+", " ", t).strip() for t in re.findall(r"<text[^>]*>(.*?)</text>", svg, re.S)]


# -- the documents --------------------------------------------------------------------------------
def test_markdown_has_the_run_header_and_one_row_per_model_and_recipe(rows, info, tmp_path) -> None:
    lines = report_files.write_report(tmp_path / "r.md", rows, info)
    text = (tmp_path / "r.md").read_text()
    assert lines[-1] == f"pytest-quant report: {tmp_path / 'r.md'} (plot: {tmp_path / 'r.png'})"
    assert "- **date**: 2025-03-04 05:06:07 UTC" in text
    assert f"- **pytest-quant**: {__version__}" in text
    assert "- **device**: cpu" in text and "- **hardware**: Test CPU 9000" in text
    assert f"- **eval tokens**: {REF['eval_tokens']} of eval.txt" in text
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0] == "| model | recipe | device | kernel | VRAM resident (CPU: footprint) | VRAM peak generating " \
                       "| decode tok/s | decode mode | % of bandwidth bound | perplexity | Δ perplexity " \
                       "| mean KL (nats) | p99 KL (nats) | p99.9 KL (nats) | max KL (nats) | RMS Δp (points) " \
                       "| top-1 % | generations equal % | tokens to divergence | result |"
    assert table[1].startswith("| --- | --- | --- | --- | ---: |")
    assert table[2:] == ["| " + " | ".join(expected_cells(p, r)) + " |"
                         for p, r in ((REF, "pass"), (NF4, "pass"), (INT8, "FAIL"))]
    assert "![Perplexity against memory, per recipe](r.png)" in text


def test_json_keeps_raw_numbers_with_units_in_the_keys(rows, info, tmp_path) -> None:
    report_files.write_report(tmp_path / "r.json", rows, info)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["run"] == {"started_utc": "2025-03-04T05:06:07+00:00", "pytest_quant_version": __version__,
                          "devices": ["cpu"], "hardware": ["Test CPU 9000"], "eval_tokens": [REF["eval_tokens"]],
                          "eval_text": "eval.txt", "args": ["--quant-report", "r.md"], "eval_batch_windows": []}
    assert doc["plot"] == "r.png" and (tmp_path / "r.png").is_file()
    by_recipe = {r["recipe"]: r for r in doc["results"]}
    assert list(by_recipe) == ["reference", "bnb-nf4", "bnb-int8"]
    for props, result in ((REF, "pass"), (NF4, "pass"), (INT8, "fail")):
        assert by_recipe[props["recipe"]] == {**props, "result": result}


def test_html_is_one_self_contained_page_with_the_table_and_the_plot(rows, info, tmp_path) -> None:
    lines = report_files.write_report(tmp_path / "r.html", rows, info)
    page = (tmp_path / "r.html").read_text()
    assert lines[-1].startswith(f"pytest-quant report: {tmp_path / 'r.html'}")
    assert page.startswith("<!doctype html>") and "<style>" in page
    assert not re.search(r"<link|<script|<img|@import|url\((?!#)|(?:src|href)=\"(?!#)", page), "the page must load nothing"
    assert "<dt>hardware</dt><dd>Test CPU 9000</dd>" in page
    for props, result in ((REF, "pass"), (NF4, "pass"), (INT8, "FAIL")):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", re.search(rf'<tr class="{result.lower()}"><td>tiny</td><td>'
                                                              rf'{props["recipe"]}</td>.*?</tr>', page).group(0))
        assert [c.replace("&#x27;", "'") for c in cells] == expected_cells(props, result)
    svg = page[page.index("<svg"):page.index("</svg>")]
    assert {"reference", "bnb-nf4", "bnb-int8"} <= set(svg_texts(svg))


def test_a_row_that_lacks_a_metric_shows_a_dash_and_stays_out_of_the_plot(tmp_path) -> None:
    partial = {k: v for k, v in NF4.items() if k != "vram_resident_bytes"}
    rows = make_rows((REF, False), (partial, False))
    info = RunInfo.of(rows, started=datetime.now(timezone.utc), device="cpu")
    report_files.write_report(tmp_path / "r.html", rows, info)
    page = (tmp_path / "r.html").read_text()
    assert re.search(r"<td>bnb-nf4</td><td>cpu</td><td>Linear4bit</td><td class=\"num\">-</td>", page)
    texts = svg_texts(page[page.index("<svg"):])
    assert "not plotted (memory or perplexity not measured): tiny-bnb-nf4" in texts
    assert "reference" in texts and "bnb-nf4" not in texts


# -- the plot -------------------------------------------------------------------------------------
def test_the_plot_is_a_png_beside_the_report_and_its_svg_carries_the_labels(rows, info, tmp_path) -> None:
    report_files.write_report(tmp_path / "deep" / "er" / "r.md", rows, info)
    width, height = png_size(tmp_path / "deep" / "er" / "r.png")
    assert width > height > 400
    plot = report_plot.render_plot(rows, tmp_path / "again.png", svg=True)
    texts = svg_texts(plot.svg)
    assert plot.svg.startswith("<svg") and plot.note is None
    assert {"reference", "bnb-nf4", "bnb-int8"} <= set(texts)  # each point labelled with its recipe
    assert "Perplexity against memory, per recipe" in texts
    assert "memory footprint on CPU (MiB)" in texts and "perplexity (lower is better)" in texts
    assert "tiny on cpu (Test CPU 9000)" in texts
    speeds = sorted(p["decode_tokens_per_s"] for p in (REF, NF4, INT8))
    assert f"{speeds[0]:.3g} decode tok/s" in texts and f"{speeds[-1]:.3g} decode tok/s" in texts


def test_on_a_gpu_the_x_axis_is_vram_and_labels_do_not_overlap(tmp_path) -> None:
    crowd = [dict(NF4, device="cuda:0", hardware="NVIDIA H100 80GB HBM3", recipe=name,
                  vram_resident_bytes=NF4["vram_resident_bytes"] + i * 2**16, perplexity=NF4["perplexity"] + i * 0.01)
             for i, name in enumerate(("bnb-nf4", "bnb-fp4", "bnb-nf4-dq", "gptq-w4g128"))]
    rows = make_rows((dict(REF, device="cuda:0", hardware="NVIDIA H100 80GB HBM3"), False), *((c, False) for c in crowd))
    from matplotlib.text import Text

    fig = report_plot.figure(rows)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    assert ax.get_xlabel() == "VRAM resident (MiB)"
    labels = [t for t in ax.texts if t.get_text() in {"reference", *(c["recipe"] for c in crowd)}]
    assert len(labels) == 5
    boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the words, without their leader lines
    frame = ax.get_window_extent(renderer)
    for i, a in enumerate(boxes):
        assert frame.x0 <= a.x0 and a.x1 <= frame.x1 and frame.y0 <= a.y0 and a.y1 <= frame.y1, labels[i].get_text()
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), f"labels overlap: {labels[i].get_text()}"


def test_without_matplotlib_the_table_is_written_and_one_line_says_what_to_install(rows, info, tmp_path,
                                                                                   monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    lines = report_files.write_report(tmp_path / "r.md", rows, info)
    assert lines == [f"pytest-quant report: no plot: matplotlib is not installed; the plot needs {report_plot.INSTALL_HINT}",
                     f"pytest-quant report: {tmp_path / 'r.md'}"]
    text = (tmp_path / "r.md").read_text()
    assert "| tiny | bnb-nf4 |" in text and "pip install 'pytest-quant[report]'" in text
    assert not (tmp_path / "r.png").exists()


def test_files_are_replaced_whole_and_no_temporary_file_is_left(rows, info, tmp_path) -> None:
    target = tmp_path / "r.json"
    target.write_text("old")
    atomic_write(target, "new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_the_step_summary_gets_the_table_appended(rows, info, tmp_path, monkeypatch) -> None:
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert report_files.append_step_summary(rows, info) == summary
    text = summary.read_text()
    assert text.startswith("earlier step\n### pytest-quant report\n")
    assert "device cpu · hardware Test CPU 9000 · eval tokens 512 of eval.txt" in text
    assert "| " + " | ".join(expected_cells(INT8, "FAIL")) + " |" in text
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    assert report_files.append_step_summary(rows, info) is None


# -- through pytest ---------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", [("--quant-report", "x.txt"), ("--quant-report=out/x",)])
def test_a_report_path_of_another_kind_is_a_usage_error(pytester: pytest.Pytester, flag) -> None:
    result = pytester.runpytest(*flag)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    value = flag[-1].split("=")[-1]
    result.stderr.fnmatch_lines([f"*--quant-report '{value}': unsupported suffix *; accepted: .md, .json, .html*"])


def test_the_ini_twin_is_checked_too(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nquant_report = reports/quant.csv\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'reports/quant.csv': unsupported suffix '.csv'; accepted: .md, .json, .html*"])


GATE = """
import pytest

@pytest.mark.perplexity_delta(max=100)
def test_gate(quant_model):
    pass
"""


def test_a_real_run_writes_the_markdown_report_and_the_step_summary(pytester: pytest.Pytester, tmp_path,
                                                                     monkeypatch) -> None:
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makepyfile(test_model_repo=GATE)
    out = tmp_path / "reports" / "r.md"
    result = pytester.runpytest("--quant-recipes", "reference,bnb-nf4", "--quant-eval-tokens", "512",
                                "-p", "no:cacheprovider", f"--quant-report={out}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"pytest-quant report: {out} (plot: {out.with_suffix('.png')})"])
    measured = {}
    for rep in result.reprec.getreports("pytest_runtest_logreport"):
        props = {k.removeprefix("quant."): v for k, v in rep.user_properties}
        if "pair" in props:  # (a setup or teardown report may carry only the release seconds of a pair)
            measured.setdefault(props["recipe"], {}).update(props)
        for pair, seconds in props.get("released", {}).items():
            measured[pair.removeprefix("tiny-")]["release_s"] = seconds
    assert set(measured) == {"reference", "bnb-nf4"}
    assert all(props["release_s"] >= 0 for props in measured.values())  # both released, each reported once
    text = out.read_text()
    assert f"- **eval tokens**: {measured['reference']['eval_tokens']} of eval.txt" in text
    if "hardware" in measured["reference"]:  # the header names the hardware when the metrics carry it
        assert f"- **hardware**: {measured['reference']['hardware']}" in text
    for recipe, props in measured.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| tiny | {recipe} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2:4] == ["cpu", props["kernel"]]
        header = [c.strip() for c in next(line for line in text.splitlines() if line.startswith("| model")).strip("|").split("|")]
        # the perplexity, then its standard error
        assert cells[header.index("perplexity")].startswith(f"{props['perplexity']:.3f}±") and cells[-1] == "pass"
    assert f"{measured['bnb-nf4']['delta_perplexity']:+.3f}" in text
    png_size(out.with_suffix(".png"))
    assert summary.read_text().count("| tiny | bnb-nf4 |") == 1


@pytest.mark.skipif(not __import__("importlib").util.find_spec("xdist"), reason="needs pytest-xdist")
def test_under_xdist_the_controller_writes_every_row_once(xdist_session) -> None:
    # the shared two-worker session of tests/conftest.py (reference, bnb-nf4, bnb-int8; GITHUB_STEP_SUMMARY set)
    result, out = xdist_session.first, xdist_session.report
    result.assert_outcomes(passed=xdist_session.passed)
    assert [line for line in result.outlines if line.startswith("pytest-quant report:")] == \
        [f"pytest-quant report: {out} (plot: {out.with_suffix('.png')})",
         f"pytest-quant report: the per-layer SQNR plot: {out.with_name(out.stem + '-layers.png')}"]
    doc = xdist_session.report_doc
    assert sorted(r["recipe"] for r in doc["results"]) == ["bnb-int8", "bnb-nf4", "reference"]
    assert all(r["perplexity"] > 1 and r["vram_resident_bytes"] > 0 and r["result"] == "pass" for r in doc["results"])
    assert doc["plot"] == "r.png" and png_size(xdist_session.first_plot)
    text = xdist_session.step_summary
    assert text.count("### pytest-quant report") == 1 and "| tiny | bnb-int8 |" in text and "| tiny | bnb-nf4 |" in text


def full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("strict", [False, True])
def test_a_report_that_cannot_be_written_leaves_no_stale_file(tmp_path, monkeypatch, strict: bool) -> None:
    # sweep case 19: exit 0 and the previous run's q.md left in place, uploaded by CI as this run's
    report = tmp_path / "q.md"
    report.write_text("old report")
    report.with_suffix(".png").write_bytes(b"old plot")
    monkeypatch.setattr(report_files, "write_report", full_disk)
    monkeypatch.delenv(report_files.STEP_SUMMARY_ENV, raising=False)
    config = SimpleNamespace(invocation_params=SimpleNamespace(dir=tmp_path, args=()))
    options = SimpleNamespace(report=report, strict=strict, device="cpu", eval_text=None)
    files = report_files.ReportFiles(config, options)
    (line,) = files.write(Rows())
    assert line.startswith(f"pytest-quant report: could not write {report}: [Errno 28] No space left on device; "
                           "no report of an earlier run is left in its place")
    assert line.endswith("the session fails (--quant-strict)" if strict else "pass --quant-strict to fail the session "
                                                                               "when this happens")
    assert not report.exists() and not report.with_suffix(".png").exists()
    assert files.failure == f"could not write {report}: [Errno 28] No space left on device"


def test_a_stale_report_that_cannot_be_removed_is_named(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(report_files, "write_report", full_disk)
    monkeypatch.setattr(report_files, "remove_stale", lambda path: [f"{path} (Permission denied)"])
    monkeypatch.delenv(report_files.STEP_SUMMARY_ENV, raising=False)
    config = SimpleNamespace(invocation_params=SimpleNamespace(dir=tmp_path, args=()))
    files = report_files.ReportFiles(config, SimpleNamespace(report=tmp_path / "q.json", strict=False, device="cpu",
                                                             eval_text=None))
    (line,) = files.write(Rows())
    assert f"the previous run's file could not be removed either and is stale: {tmp_path / 'q.json'} (Permission " \
           "denied)" in line


FULL_DISK_CONFTEST = """
import pytest_quant.report.files as files

def full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")

files.write_report = full_disk
"""


@pytest.mark.parametrize("strict", [False, True])
def test_an_unwritable_report_fails_the_session_only_under_strict(pytester: pytest.Pytester, monkeypatch,
                                                                  strict: bool) -> None:
    import pytest_quant.report.files as files

    monkeypatch.setattr(files, "write_report", files.write_report)  # put back after the conftest replaced it
    monkeypatch.delenv(files.STEP_SUMMARY_ENV, raising=False)
    pytester.makeconftest(FULL_DISK_CONFTEST)
    pytester.makepyfile("def test_plain(): pass")
    (pytester.path / "rep").mkdir()
    (pytester.path / "rep" / "q.md").write_text("old report")
    result = pytester.runpytest("-p", "no:cacheprovider", "--quant-recipes=reference", "--quant-report=rep/q.md",
                                *(["--quant-strict"] if strict else []))
    assert result.ret == (pytest.ExitCode.TESTS_FAILED if strict else pytest.ExitCode.OK)
    result.stdout.fnmatch_lines([f"pytest-quant report: could not write {pytester.path / 'rep' / 'q.md'}: [[]Errno 28[]]"
                                 " No space left on device; no report of an earlier run is left in its place*"])
    assert not (pytester.path / "rep" / "q.md").exists()
