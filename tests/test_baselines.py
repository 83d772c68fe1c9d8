"""Baselines: the file format, direction-aware tolerances, and the syrupy workflow through pytester.

The pytester runs use the embedded model on CPU with 1024 eval tokens; quality and VRAM are
deterministic there, so a baseline edited by a known amount is just above or just below its bound.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

from pytest_quant import gates, hardware
from pytest_quant.baselines.compare import Comparison, compare
from pytest_quant.baselines.record import BaselineFormatError, dumps, loads
from pytest_quant.baselines.settings import BaselineSettings
from pytest_quant.metrics import BASELINE_METRIC as METRIC
from pytest_quant.tolerances import parse_tolerance_ini

REFERENCE = ("--quant-recipes", "reference")
BOTH = ("--quant-recipes", "reference,bnb-nf4")
SITE = Path("baselines/tiny/cpu")
OTHER_GPU = Path("baselines/tiny/nvidia-h100-80gb-hbm3")


def record(metrics: dict, recipe: str = "reference", **context) -> dict:
    return {"format_version": 1, "context": {"model": "tiny", "recipe": recipe, "device": "cpu", **context},
            "metrics": metrics}


def edit(path: Path, **changes) -> None:
    """Rewrite a baseline's metrics with functions of their stored values."""
    data = json.loads(path.read_text())
    for key, change in changes.items():
        data["metrics"][key] = change(data["metrics"][key])
    path.write_text(dumps(data))


# -- the file -----------------------------------------------------------------------------------
def test_dumps_sorts_keys_and_fixes_precision_per_metric() -> None:
    text = dumps(record({"vram_resident_bytes": 10957824.0, "perplexity": 143.29371, "decode_tokens_per_s": 812.34,
                         "top1_agreement_percent": 100.0, "mean_kl_nats": 0.0095012, "p99_kl_nats": 0.0}))
    assert text.endswith("}\n")
    assert '"decode_tokens_per_s": 812.3,' in text
    assert '"mean_kl_nats": 0.009501,' in text
    assert '"p99_kl_nats": 0.000000,' in text
    assert '"perplexity": 143.2937,' in text
    assert '"top1_agreement_percent": 100.000,' in text
    assert '"vram_resident_bytes": 10957824\n' in text
    keys = re.findall(r'^\s*"(\w+)":', text, flags=re.M)
    assert keys[:2] == ["context", "device"] and keys.index("format_version") < keys.index("metrics")
    assert loads(text)["metrics"]["perplexity"] == 143.2937


def test_dumps_refuses_a_number_that_is_not_finite() -> None:
    with pytest.raises(ValueError, match="perplexity is inf"):
        dumps(record({"perplexity": math.inf}))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"metrics": {', "not valid JSON: Expecting property name enclosed in double quotes: line 1 column 14"),
        ("[1, 2]", "expected a JSON object at the top level, found list"),
        ('{"format_version": 2, "context": {}, "metrics": {}}', "format_version is 2, expected 1"),
        ('{"format_version": 1, "context": {}, "metrics": [1]}', "'metrics' must be an object"),
        ('{"format_version": 1, "metrics": {}}', "'context' must be an object, found None"),
        ('{"format_version": 1, "context": {}, "metrics": {"ppl": 1}}', "unknown metric 'ppl'"),
        ('{"format_version": 1, "context": {}, "metrics": {"perplexity": "low"}}',
         "metrics.perplexity is 'low', expected a finite number >= 0"),
        ('{"format_version": 1, "context": {}, "metrics": {"vram_resident_bytes": -1}}', "metrics.vram_resident_bytes is -1"),
    ],
)
def test_loads_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(BaselineFormatError) as excinfo:
        loads(text)
    assert problem in str(excinfo.value)


# -- tolerances ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "baseline", "tolerance", "measured", "regressed", "improved"),
    [
        # higher is better, tolerance a fraction: floor 900, improved above 1100
        ("decode_tokens_per_s", 1000.0, 0.1, 899.9, True, False),
        ("decode_tokens_per_s", 1000.0, 0.1, 900.1, False, False),
        ("decode_tokens_per_s", 1000.0, 0.1, 1099.9, False, False),
        ("decode_tokens_per_s", 1000.0, 0.1, 1100.1, False, True),
        # lower is better, a fraction: ceiling 1050, improved below 950
        ("vram_resident_bytes", 1000.0, 0.05, 1050.1, True, False),
        ("vram_resident_bytes", 1000.0, 0.05, 1049.9, False, False),
        ("vram_resident_bytes", 1000.0, 0.05, 950.1, False, False),
        ("vram_resident_bytes", 1000.0, 0.05, 949.9, False, True),
        # lower is better, absolute: ceiling 10.05, improved below 9.95
        ("perplexity", 10.0, 0.05, 10.0501, True, False),
        ("perplexity", 10.0, 0.05, 10.0499, False, False),
        ("perplexity", 10.0, 0.05, 9.9501, False, False),
        ("perplexity", 10.0, 0.05, 9.9499, False, True),
        ("mean_kl_nats", 0.01, 0.001, 0.01101, True, False),
        ("mean_kl_nats", 0.01, 0.001, 0.01099, False, False),
        ("mean_kl_nats", 0.0, 0.001, 0.0, False, False),  # the reference cannot improve on zero
        # higher is better, absolute points: floor 92.5, improved above 93.5
        ("top1_agreement_percent", 93.0, 0.5, 92.49, True, False),
        ("top1_agreement_percent", 93.0, 0.5, 92.51, False, False),
        ("top1_agreement_percent", 93.0, 0.5, 93.51, False, True),
        ("top1_agreement_percent", 100.0, 0.5, 100.0, False, False),
        # tolerance 0: any change in the worse direction regresses
        ("perplexity", 10.0, 0.0, 10.0001, True, False),
        ("perplexity", 10.0, 0.0, 10.0, False, False),
    ],
)
def test_comparison_is_direction_aware(key, baseline, tolerance, measured, regressed, improved) -> None:
    c = Comparison(METRIC[key], measured, baseline, tolerance)
    assert (c.regressed, c.improved) == (regressed, improved)


def test_tokens_per_second_regression_message() -> None:
    c = Comparison(METRIC["decode_tokens_per_s"], 812.3, 1000.0, 0.1)
    assert c.sentence("[tiny, bnb-nf4, cuda:0]", "baselines/tiny/nvidia-h100-80gb-hbm3/test_x[tiny-bnb-nf4].json") == (
        "decode 812.3 tok/s below baseline 1000.0 tok/s - 10% = 900.0 tok/s [tiny, bnb-nf4, cuda:0] "
        "(baselines/tiny/nvidia-h100-80gb-hbm3/test_x[tiny-bnb-nf4].json)"
    )
    better = Comparison(METRIC["vram_resident_bytes"], 8 * 2**20, 10 * 2**20, 0.05)
    assert better.sentence("[tiny, bnb-nf4, cpu]", "p.json") == (
        "VRAM resident 8.00 MiB improved beyond baseline 10.00 MiB - 5% = 9.50 MiB [tiny, bnb-nf4, cpu] (p.json)"
    )


def test_improvement_passes_but_makes_snapshot_update_rewrite() -> None:
    stored = dumps(record({"perplexity": 10.0}))
    received = json.loads(dumps(record({"perplexity": 9.0})))
    outcome = compare(received, stored, {"perplexity": 0.05})
    assert [c.improved for c in outcome.comparisons] == [True]
    assert outcome.matches(update=False) and not outcome.matches(update=True)
    within = compare(json.loads(dumps(record({"perplexity": 10.01}))), stored, {"perplexity": 0.05})
    assert within.matches(update=False) and within.matches(update=True)


def test_compare_refuses_quality_measured_on_other_eval_tokens() -> None:
    then = {"text": "eval.txt", "text_sha256": "ab" * 32, "tokens": 8192, "context_tokens": 512}
    stored = dumps(record({"perplexity": 10.0}, eval=then))
    received = json.loads(dumps(record({"perplexity": 10.0}, eval={**then, "tokens": 1024})))
    outcome = compare(received, stored, {"perplexity": 0.05})
    assert not outcome.matches(update=False)
    assert "measured on 8192 tokens of eval.txt" in outcome.problems[0]
    assert "this run on 1024 tokens" in outcome.problems[0]


def test_compare_names_a_gated_metric_the_baseline_lacks() -> None:
    outcome = compare(json.loads(dumps(record({"perplexity": 10.0, "vram_resident_bytes": 5}))),
                      dumps(record({"vram_resident_bytes": 5})), {"perplexity": 0.05, "vram_resident_bytes": 0.02})
    assert outcome.problems == ["has no perplexity: refresh with --snapshot-update"]


def test_marker_tolerance_is_a_number_for_the_first_metric_or_a_dict() -> None:
    spec = gates.MARKERS
    limits = gates.parse(spec["tokens_per_second"], (), {"vs": "baseline", "tolerance": 0.2})
    assert (limits.vs, limits.tolerance, limits.values) == ("baseline", {"decode_tokens_per_s": 0.2}, {})
    kl = gates.parse(spec["kl_divergence"], (), {"vs": "baseline", "tolerance": {"top1_agreement_percent": 1}})
    assert kl.tolerance == {"top1_agreement_percent": 1.0}
    both = gates.parse(spec["vram_budget"], ("6 GiB",), {"vs": "baseline"})
    assert both.values == {"budget": 6 * 2**30} and both.vs == "baseline"


@pytest.mark.parametrize(
    ("marker", "kwargs", "message"),
    [
        ("perplexity_delta", {"vs": "reference"}, "(vs='reference'): the only comparison is vs='baseline'"),
        ("perplexity_delta", {"tolerance": 0.1}, "(tolerance=0.1): a tolerance needs vs='baseline'"),
        ("kl_divergence", {"vs": "baseline", "tolerance": {"ppl": 1}}, "unknown metric 'ppl'; this marker compares "
                                                                       "mean_kl_nats, p99_kl_nats, top1_agreement_percent"),
        ("vram_budget", {"vs": "baseline", "tolerance": -0.1}, "must be a finite number >= 0, got -0.1"),
        ("tokens_per_second", {"vs": "baseline", "tolerance": 1.0}, "must be below 1, got 1.0"),
        ("tokens_per_second", {"vs": "baseline", "tolerance": "10%"}, "got '10%'"),
    ],
)
def test_bad_baseline_marker_arguments_are_named(marker: str, kwargs: dict, message: str) -> None:
    with pytest.raises(gates.MarkerError) as excinfo:
        gates.parse(gates.MARKERS[marker], (), kwargs)
    assert message in str(excinfo.value)


def test_ini_tolerances_per_device_kind() -> None:
    parsed = parse_tolerance_ini(["perplexity = 0.1", "cpu: decode_tokens_per_s = 0.9", "cuda:vram_resident_bytes=0"])
    assert parsed == {(None, "perplexity"): 0.1, ("cpu", "decode_tokens_per_s"): 0.9, ("cuda", "vram_resident_bytes"): 0.0}
    settings = BaselineSettings(root=Path("b"), device="cpu", rootpath=Path("."), eval_text=Path("e"),
                                          recipes=frozenset(), ini_tolerances=parsed)
    assert settings.tolerance("perplexity") == 0.1
    assert settings.tolerance("decode_tokens_per_s") == 0.9
    assert settings.tolerance("vram_resident_bytes") == METRIC["vram_resident_bytes"].defaults["cpu"]
    assert BaselineSettings(**{**settings.__dict__, "device": "cuda:0"}).tolerance("vram_resident_bytes") == 0.0


@pytest.mark.parametrize(
    ("line", "problem"),
    [("perplexity 0.1", "expected '[cpu:|cuda:]metric = number'"), ("tpu:perplexity = 0.1", "unknown device kind 'tpu'"),
     ("ppl = 0.1", "unknown metric 'ppl'"), ("decode_tokens_per_s = 1.5", "tolerance for decode_tokens_per_s is a fraction of the baseline and must be below 1")],
)
def test_bad_ini_tolerance_is_a_usage_error(pytester: pytest.Pytester, line: str, problem: str) -> None:
    pytester.makeini(f"[pytest]\nquant_baseline_tolerances =\n    {line}\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"ini quant_baseline_tolerances line {line!r}: {problem}" in result.stderr.str()


# -- hardware keys ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "key"),
    [("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"), ("NVIDIA GeForce RTX 4090", "nvidia-geforce-rtx-4090"),
     ("Tesla T4", "tesla-t4"), ("  AMD Instinct MI300X (gfx942) ", "amd-instinct-mi300x-gfx942")],
)
def test_hardware_names_are_normalised(name: str, key: str) -> None:
    assert hardware.normalise_hardware_name(name) == key


def test_hardware_key_is_the_named_gpu_or_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: asked.append(index) or "NVIDIA H100 80GB HBM3")
    hardware.hardware_name.cache_clear()
    assert hardware.hardware_key("cuda:1") == "nvidia-h100-80gb-hbm3" and asked == [1]
    assert hardware.hardware_key("cpu") == "cpu"
    hardware.hardware_name.cache_clear()


# -- atomic writes ------------------------------------------------------------------------------
WRITER = """
import sys
from pathlib import Path
from pytest_quant.atomic import atomic_write
target, tag = Path(sys.argv[1]), sys.argv[2]
for i in range(300):
    atomic_write(target, '{"writer": "%s", "i": %d, "pad": "%s"}\\n' % (tag, i, tag * (1000 + 37 * i)))
"""


def test_concurrent_writers_never_leave_a_torn_file(tmp_path: Path) -> None:
    target = tmp_path / "tiny" / "cpu" / "test_x[tiny-reference].json"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(target), tag]) for tag in "ab"]
    reads = 0
    while any(w.poll() is None for w in writers):
        if target.exists():
            data = json.loads(target.read_text())  # never half-written
            assert data["writer"] in "ab" and len(data["pad"]) == 1000 + 37 * data["i"]
            reads += 1
    assert [w.returncode for w in writers] == [0, 0]
    assert reads > 0 and json.loads(target.read_text())["i"] == 299
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temporary files left


# -- through pytest ------------------------------------------------------------------------------
GATED = """
import pytest

@pytest.mark.vram_budget(vs="baseline")
@pytest.mark.perplexity_delta(vs="baseline")
def test_gate(quant_model):
    pass
"""


def test_missing_baseline_fails_then_snapshot_update_writes_it(run_quant, pytester: pytest.Pytester) -> None:
    path = pytester.path / SITE / "test_gate[tiny-reference].json"
    result = run_quant(GATED, *REFERENCE)
    result.assert_outcomes(failed=1)
    assert ("no baseline for tiny/cpu: run with --snapshot-update (baselines/tiny/cpu/test_gate[tiny-reference].json)"
            in result.stdout.str())
    assert not path.exists()

    result = run_quant(GATED, *REFERENCE, "--snapshot-update")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 snapshot generated.*"])
    text = path.read_text()
    data = loads(text)
    assert text == dumps(data)  # sorted keys, fixed precision: the file is its own canonical form
    assert set(data["metrics"]) == {"vram_resident_bytes", "perplexity"}
    assert data["metrics"]["perplexity"] > 1 and data["metrics"]["vram_resident_bytes"] > 10**6
    assert re.search(r'"perplexity": \d+\.\d{4},?\n', text)
    context = data["context"]
    assert (context["model"], context["recipe"], context["device"]) == ("tiny", "reference", "cpu")
    assert context["hardware"]["key"] == "cpu" and context["eval"]["tokens"] == 1024
    assert context["eval"]["batch_windows"] == 8  # LLM.int8's figures move with the batch: part of the eval
    assert context["standard_errors"]["perplexity_se"] > 0  # beside the figure, never compared
    assert {"torch", "transformers", "python", "pytest-quant"} <= set(context["versions"])

    result = run_quant(GATED, *REFERENCE)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 snapshot passed.*"])
    assert path.read_text() == text


def test_unused_baselines_are_reported_and_only_this_hardwares_are_deleted(run_quant, pytester: pytest.Pytester) -> None:
    site, other = pytester.path / SITE, pytester.path / OTHER_GPU
    site.mkdir(parents=True)
    other.mkdir(parents=True)
    orphan = site / "test_removed[tiny-reference].json"
    orphan_text = dumps(record({"perplexity": 1.0}))
    other_recipe = site / "test_gate[tiny-bnb-int8].json"  # a recipe this session does not run
    other_recipe.write_text(dumps(record({"perplexity": 1.0}, recipe="bnb-int8")))
    gpu_files = {other / "test_gate[tiny-reference].json": dumps(record({"perplexity": 2.0}, device="cuda:0")),
                 other / "test_removed[tiny-reference].json": dumps(record({"perplexity": 3.0}, device="cuda:0"))}
    for path, text in gpu_files.items():
        path.write_text(text)
    orphan.write_text(orphan_text)

    result = run_quant(GATED, *REFERENCE, "--snapshot-update")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 snapshot generated. 1 unused snapshot deleted.*", "*Deleted*test_removed*"])
    assert not orphan.exists()
    assert other_recipe.exists() and (site / "test_gate[tiny-reference].json").exists()
    assert {p: p.read_text() for p in gpu_files} == gpu_files

    orphan.write_text(orphan_text)
    result = run_quant(GATED, *REFERENCE)
    result.assert_outcomes(passed=1)
    assert result.ret == 1  # syrupy fails a session that leaves snapshots unused
    result.stdout.fnmatch_lines(["*1 snapshot passed. 1 snapshot unused.*",
                                 "*Re-run pytest with --snapshot-update to delete unused snapshots.*"])
    assert orphan.read_text() == orphan_text and other_recipe.exists()
    assert {p: p.read_text() for p in gpu_files} == gpu_files


SPEED = """
import pytest

@pytest.mark.tokens_per_second(vs="baseline")
def test_slow(quant_model):
    pass

@pytest.mark.tokens_per_second(vs="baseline", tolerance=0.1)
def test_fast(quant_model):
    pass
"""


def test_tokens_per_second_below_baseline_fails_and_above_is_reported(run_quant, pytester: pytest.Pytester) -> None:
    site = pytester.path / SITE
    site.mkdir(parents=True)
    # far from anything this machine measures, so the outcome does not depend on its load
    (site / "test_slow[tiny-reference].json").write_text(dumps(record({"decode_tokens_per_s": 1e6})))
    (site / "test_fast[tiny-reference].json").write_text(dumps(record({"decode_tokens_per_s": 0.01})))

    result = run_quant(SPEED, *REFERENCE)
    result.assert_outcomes(passed=1, failed=1)
    cpu_tolerance = METRIC["decode_tokens_per_s"].defaults["cpu"]
    floor = 1e6 * (1 - cpu_tolerance)
    result.stdout.re_match_lines([
        rf"decode \d+\.\d tok/s below baseline 1000000\.0 tok/s - {100 * cpu_tolerance:g}% = {floor:.1f} tok/s "
        r"\[tiny, reference, cpu\] \(baselines/tiny/cpu/test_slow\[tiny-reference\]\.json\)$",
    ])
    result.stdout.re_match_lines([
        r"=+ pytest-quant baselines =+",
        r"improved beyond tolerance: refresh with --snapshot-update",
        r"  decode \d+\.\d tok/s improved beyond baseline 0\.0 tok/s \+ 10% = 0\.0 tok/s \[tiny, reference, cpu\] "
        r"\(baselines/tiny/cpu/test_fast\[tiny-reference\]\.json\)",
    ])

    result = run_quant(SPEED, *REFERENCE, "--snapshot-update")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*2 snapshots updated.*"])
    measured = {p.stem: loads(p.read_text())["metrics"]["decode_tokens_per_s"] for p in site.iterdir()}
    assert len(set(measured.values())) == 1 and 0.5 < measured["test_slow[tiny-reference]"] < 1e6
    assert "pytest-quant baselines" not in result.stdout.str()


QUALITY = """
import pytest

@pytest.mark.vram_budget(vs="baseline")
@pytest.mark.perplexity_delta(vs="baseline"{ppl})
@pytest.mark.kl_divergence(vs="baseline"{kl})
def test_quality(quant_model):
    pass
"""


def test_quality_and_vram_regressions_are_direction_aware(run_quant, pytester: pytest.Pytester) -> None:
    plain = QUALITY.format(ppl="", kl="")
    result = run_quant(plain, *BOTH, "--snapshot-update")
    result.assert_outcomes(passed=2)
    nf4, ref = (pytester.path / SITE / f"test_quality[tiny-{r}].json" for r in ("bnb-nf4", "reference"))
    measured = loads(nf4.read_text())["metrics"]
    assert 0 < measured["mean_kl_nats"] < measured["p99_kl_nats"] and measured["top1_agreement_percent"] < 100
    # the quantized model got worse than its baseline by just over each default tolerance ...
    edit(nf4, perplexity=lambda v: v - 0.06, mean_kl_nats=lambda v: v - 0.0011, p99_kl_nats=lambda v: v - 0.005,
         top1_agreement_percent=lambda v: v + 0.6, vram_resident_bytes=lambda v: int(v / 1.03))
    # ... and the reference better than its baseline: that passes
    edit(ref, perplexity=lambda v: v + 0.06, vram_resident_bytes=lambda v: int(v * 1.03))
    stored = {p: p.read_text() for p in (nf4, ref)}

    result = run_quant(plain, *BOTH)
    result.assert_outcomes(passed=1, failed=1)
    where = r"\[tiny, bnb-nf4, cpu\] \(baselines/tiny/cpu/test_quality\[tiny-bnb-nf4\]\.json\)$"
    result.stdout.re_match_lines([
        rf"mean KL \d\.\d{{6}} nats above baseline \d\.\d{{6}} nats \+ 0\.001 nats = \d\.\d{{6}} nats {where}",
        rf"top-1 agreement \d+\.\d\d% below baseline \d+\.\d\d% - 0\.5 points = \d+\.\d\d% {where}",
        rf"perplexity \d+\.\d{{4}} above baseline \d+\.\d{{4}} \+ 0\.05 = \d+\.\d{{4}} {where}",
        rf"VRAM resident \d+\.\d\d MiB above baseline \d+\.\d\d MiB \+ 2% = \d+\.\d\d MiB {where}",
    ])
    assert "99th percentile KL" not in result.stdout.str().split("Captured quant baseline")[0]  # within its 0.01
    result.stdout.fnmatch_lines(["*improved beyond tolerance: refresh with --snapshot-update*",
                                 "*perplexity * improved beyond baseline * - 0.05 = * [[]tiny, reference, cpu[]]*",
                                 "*VRAM resident * improved beyond baseline * - 2% = * [[]tiny, reference, cpu[]]*"])
    result.stdout.fnmatch_lines(["*1 snapshot failed. 1 snapshot passed.*"])
    assert {p: p.read_text() for p in stored} == stored  # a failed comparison writes nothing

    # wider tolerances, on the markers and in the ini, let the same measurements pass
    widened = QUALITY.format(ppl=", tolerance=0.07", kl=', tolerance={"mean_kl_nats": 0.002, "top1_agreement_percent": 1}')
    result = run_quant(widened, *BOTH, ini="[pytest]\nquant_baseline_tolerances =\n    cpu: vram_resident_bytes = 0.04\n")
    result.assert_outcomes(passed=2)
    assert {p: p.read_text() for p in stored} == stored


def test_corrupt_or_misshapen_baseline_fails_and_is_kept_until_update(run_quant, pytester: pytest.Pytester) -> None:
    site = pytester.path / SITE
    site.mkdir(parents=True)
    torn = site / "test_gate[tiny-reference].json"
    torn.write_text('{"format_version": 1, "metrics": {"perplexity": 14')
    result = run_quant(GATED, *REFERENCE)
    result.assert_outcomes(failed=1)
    assert ("baseline baselines/tiny/cpu/test_gate[tiny-reference].json: not valid JSON: Expecting ',' delimiter: "
            "line 1 column 51" in result.stdout.str())
    assert torn.read_text() == '{"format_version": 1, "metrics": {"perplexity": 14'

    misshapen = dumps(record({"perplexity": 14.0, "vram_resident_bytes": 1000})).replace("14.0000", '"fourteen"')
    torn.write_text(misshapen)
    result = run_quant(GATED, *REFERENCE)
    result.assert_outcomes(failed=1)
    assert ("baseline baselines/tiny/cpu/test_gate[tiny-reference].json: metrics.perplexity is 'fourteen', "
            "expected a finite number >= 0" in result.stdout.str())
    assert torn.read_text() == misshapen

    result = run_quant(GATED, *REFERENCE, "--snapshot-update")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 snapshot updated.*"])
    assert loads(torn.read_text())["metrics"]["perplexity"] > 1


CONFTEST_MARKS = """
import pytest

def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.vram_budget(vs="baseline"))
"""


def test_markers_added_by_a_conftest_hook_are_compared_and_deselected_baselines_kept(
    run_quant, pytester: pytest.Pytester
) -> None:
    pytester.makeconftest(CONFTEST_MARKS)
    site = pytester.path / SITE
    site.mkdir(parents=True)
    kept = site / "test_b[tiny-reference].json"
    kept.write_text(dumps(record({"vram_resident_bytes": 1})))
    source = "def test_a(quant_model):\n    pass\n\ndef test_b(quant_model):\n    pass\n"
    result = run_quant(source, *REFERENCE, "-k", "test_a", "--snapshot-update")
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines(["*1 snapshot generated.*"])
    assert "unused" not in result.stdout.str()
    assert (site / "test_a[tiny-reference].json").exists()
    assert loads(kept.read_text())["metrics"]["vram_resident_bytes"] == 1


def test_xdist_workers_write_and_compare_baselines(xdist_session) -> None:
    # the shared two-worker session of tests/conftest.py: before it, baselines/tiny/cpu held an orphan
    # (test_gone[tiny-reference]) and another GPU kind's folder a test_a[tiny-reference] baseline
    generated = len(xdist_session.baseline_names())
    result = xdist_session.first
    result.assert_outcomes(passed=xdist_session.passed)
    result.stdout.fnmatch_lines([f"*{generated} snapshots generated. 1 unused snapshot deleted.*"])
    assert sorted(xdist_session.baselines) == xdist_session.baseline_names()  # the orphan deleted
    for recipe in xdist_session.recipes:  # the tests of one pair share its one measurement
        files = [xdist_session.baselines[f"test_{n}[tiny-{recipe}].json"] for n in "abcd"]
        assert len({loads(text)["metrics"]["vram_resident_bytes"] for text in files}) == 1
    assert loads(xdist_session.other_gpu_baseline)["metrics"]["vram_resident_bytes"] == 1

    result = xdist_session.again
    result.assert_outcomes(passed=xdist_session.passed)
    result.stdout.fnmatch_lines([f"*{generated} snapshots passed.*"])


def test_two_tests_sharing_a_baseline_file_fail_at_setup(pytester: pytest.Pytester) -> None:
    for module in ("test_one", "test_two"):
        pytester.makepyfile(**{module: GATED})
    result = pytester.runpytest("-p", "no:cacheprovider", *REFERENCE)
    result.assert_outcomes(errors=2)
    assert ("tests test_one.py::test_gate[tiny-reference], test_two.py::test_gate[tiny-reference] would share the "
            "baseline file tiny/<hardware>/test_gate[tiny-reference].json: rename one of them") in result.stdout.str()


def _baseline(eval_context: dict) -> dict:
    return {"format_version": 1, "context": {"model": "tiny", "recipe": "bnb-int8", "device": "cpu",
                                             "eval": eval_context, "standard_errors": {"perplexity_se": 3.69}},
            "metrics": {"perplexity": 10.0}}


def test_a_baseline_of_another_evaluation_batch_is_not_compared() -> None:
    from pytest_quant.baselines.compare import compare
    from pytest_quant.baselines.record import dumps

    then = {"text": "eval.txt", "text_sha256": "ab" * 32, "tokens": 8192, "context_tokens": 512, "batch_windows": 8}
    now = json.loads(dumps(_baseline({**then, "batch_windows": 1})))
    outcome = compare(now, dumps(_baseline(then)), {"perplexity": 0.05})
    assert not outcome.matches(update=False)
    assert "8 windows a batch, this run on 8192 tokens of eval.txt (sha256 abababababab...), 1 windows a batch" \
        in outcome.problems[0]
    # a baseline from before the batch was recorded was evaluated 8 windows a batch, as every run then was
    older = {k: v for k, v in then.items() if k != "batch_windows"}
    assert compare(json.loads(dumps(_baseline(then))), dumps(_baseline(older)), {"perplexity": 0.05}).matches(False)


def test_a_refresh_deletes_no_baseline_of_a_module_skipped_at_collection_nor_a_users_file(
        run_quant, pytester: pytest.Pytester) -> None:
    site = pytester.path / SITE
    site.mkdir(parents=True)
    skipped = site / "test_needs_lib[tiny-reference].json"  # the baseline of a module this runner cannot import
    skipped.write_text(dumps(record({"perplexity": 1.0})))
    notes = site / "NOTES.json"  # a user's file, not a baseline
    notes.write_text('{"why": "recorded on the release branch"}\n')
    pytester.makepyfile(test_needs_lib="import pytest\npytest.importorskip('no_such_library')\n")
    result = run_quant(GATED, *REFERENCE, "--snapshot-update")
    result.assert_outcomes(passed=1, skipped=1)
    assert "deleted" not in result.stdout.str().lower().replace("no baseline was called unused or deleted", "")
    result.stdout.fnmatch_lines(["*no baseline was called unused or deleted: test_needs_lib.py skipped or failed at "
                                 "collection*"])
    assert skipped.exists() and notes.exists()
    # without the skipped module the orphan is unused and goes; the user's file never does
    (pytester.path / "test_needs_lib.py").unlink()
    result = run_quant(GATED, *REFERENCE, "--snapshot-update")
    result.stdout.fnmatch_lines(["*1 unused snapshot deleted*"])
    assert not skipped.exists() and notes.exists()


def test_a_new_gpu_kind_gates_quality_against_another_kinds_baseline(tmp_path: Path) -> None:
    from pytest_quant.baselines.gate import without_own_baseline
    from pytest_quant.measure.quality import QualityMeasurement
    from pytest_quant.measure.vram import VramMeasurement
    from pytest_quant.metrics import Measurements

    root = tmp_path / "baselines"
    older, newer = root / "tiny" / "nvidia-a100", root / "tiny" / "nvidia-h100-80gb-hbm3"
    for folder, perplexity in ((older, 100.0), (newer, 108.7)):
        folder.mkdir(parents=True)
        (folder / "test_q[tiny-nf4].json").write_text(dumps(record({"perplexity": perplexity,
                                                                     "vram_resident_bytes": 1000}, recipe="nf4")))
    os.utime(older / "test_q[tiny-nf4].json", (1, 1))  # the H100's is the newest
    settings = BaselineSettings(root=root, device="cuda:0", rootpath=tmp_path, eval_text=Path("e"),
                                recipes=frozenset({"nf4"}), _hardware="nvidia-h200", _environment={"versions": {}})
    quality = QualityMeasurement(108.72, 4.69, 1024, 2, 512, 512, 0.01, 0.1, 95.0, 1.0)
    m = Measurements("tiny", "nf4", "cuda:0", quality=quality, vram=VramMeasurement("cuda:0", 999, 999, 1200))
    received = record({"perplexity": 108.72, "vram_resident_bytes": 999}, recipe="nf4", device="cuda:0")
    path = root / "tiny" / "nvidia-h200" / "test_q[tiny-nf4].json"
    result = without_own_baseline(settings, m, {"perplexity": 0.05, "vram_resident_bytes": 0.05}, received, path,
                                   "perplexity_delta")
    assert result.baseline_from == "nvidia-h100-80gb-hbm3"
    (violation,) = result.violations  # quality passed against the H100's; memory has no H200 baseline
    assert violation.reason.startswith("vram_resident_bytes: no baseline for tiny/nvidia-h200: speed and memory are "
                                       "recorded per GPU kind; record this kind's with --snapshot-update")
    assert result.missing == settings.missing_line("tiny")
    # the ini names the kind to use: the A100's perplexity of 100 is 8.72 away
    named = BaselineSettings(**{**settings.__dict__, "fallback_hardware": "nvidia-a100"})
    result = without_own_baseline(named, m, {"perplexity": 0.05}, received, path, "perplexity_delta")
    assert result.baseline_from == "nvidia-a100" and "perplexity 108.7200 above baseline 100.0000" in \
        result.violations[0].reason
    # a kind with no baseline anywhere: quality fails too, with the same line
    lonely = BaselineSettings(**{**settings.__dict__, "root": tmp_path / "none"})
    alone = tmp_path / "none" / "tiny" / "nvidia-h200" / path.name
    result = without_own_baseline(lonely, m, {"perplexity": 0.05}, received, alone, "perplexity_delta")
    assert "no other GPU kind has this test's baseline either" in result.violations[0].reason


# -- weak: baselines ----------------------------------------------------------------------------------------


def fingerprinted_record(model_sha: str, recipe: dict) -> dict:
    return {"format_version": 1, "metrics": {"vram_resident_bytes": 1000},
            "context": {"model": "m", "recipe": "mine", "device": "cpu", "model_sha256": model_sha,
                        "recipe_settings": recipe}}


@pytest.mark.parametrize("stored, message", [
    (fingerprinted_record("b" * 64, {"backend": "bitsandbytes", "load_in_4bit": True}),
     "recorded with model weights (sha256 of config.json and weight files) bbbbbbbbbbbb..., this run with "
     "aaaaaaaaaaaa...: it is the baseline of another model or recipe under the same name*"),
    (fingerprinted_record("a" * 64, {"backend": "bitsandbytes", "load_in_8bit": True}),
     'recorded with recipe settings {"backend": "bitsandbytes", "load_in_8bit": true}, this run with '
     '{"backend": "bitsandbytes", "load_in_4bit": true}*'),
], ids=["other-weights", "other-recipe"])
def test_baseline_of_another_model_or_recipe_is_not_compared(stored: dict, message: str) -> None:
    received = fingerprinted_record("a" * 64, {"backend": "bitsandbytes", "load_in_4bit": True})
    outcome = compare(received, dumps(stored), {"vram_resident_bytes": 0.05})
    (problem,) = outcome.problems
    assert fnmatch(problem, message), problem
    assert not outcome.matches(update=False)


def test_baseline_without_fingerprint_compares_and_is_rewritten_on_update() -> None:
    received = fingerprinted_record("a" * 64, {"backend": "reference"})
    old = fingerprinted_record("a" * 64, {"backend": "reference"})
    del old["context"]["model_sha256"], old["context"]["recipe_settings"]
    outcome = compare(received, dumps(old), {"vram_resident_bytes": 0.05})
    assert outcome.problems == [] and outcome.matches(update=False) and not outcome.matches(update=True)


def test_baseline_records_the_fingerprint_and_refuses_other_weights(pytester: pytest.Pytester) -> None:
    folder = model_copy(pytester.path / "m")
    pytester.makepyfile("""
import pytest

@pytest.mark.vram_budget(vs="baseline")
def test_q(quant_model):
    pass
""")
    args = ("-p", "no:cacheprovider", "--quant-recipes", "reference", f"--quant-model={folder}")
    assert pytester.runpytest(*args, "--snapshot-update").ret == pytest.ExitCode.OK
    (written,) = (pytester.path / "baselines" / "m").rglob("*.json")
    context = json.loads(written.read_text())["context"]
    assert len(context["model_sha256"]) == 64 and context["recipe_settings"] == {"backend": "reference"}
    assert written.stat().st_mode & 0o777 == 0o666 & ~_umask()
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "initializer_range": 0.5}))  # other weights, same name
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*recorded with model weights (sha256 of config.json and weight files) *, this run "
                                 "with *: it is the baseline of another model or recipe under the same name*"])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def model_copy(where: Path) -> Path:
    """A copy of the embedded model folder (its weights linked, not copied)."""
    from pytest_quant.models import TINY_DIR

    where.mkdir(parents=True)
    for path in TINY_DIR.iterdir():
        if path.name == "model.safetensors":
            (where / path.name).symlink_to(path)
        elif path.is_file():
            shutil.copy(path, where / path.name)
    return where


def test_snapshot_update_new_only_records_a_missing_baseline_and_keeps_the_others(
        run_quant, pytester: pytest.Pytester) -> None:
    site = pytester.path / SITE
    site.mkdir(parents=True)
    kept = site / "test_other[tiny-reference].json"
    kept.write_text(dumps(record({"perplexity": 1.0})))
    result = run_quant(GATED + "\n\ndef test_other(quant_model):\n    pass\n", *REFERENCE, "--snapshot-update-new-only")
    result.assert_outcomes(passed=2)
    assert (site / "test_gate[tiny-reference].json").is_file()  # the missing one was recorded, not failed
    assert kept.read_text() == dumps(record({"perplexity": 1.0}))


def test_a_failing_body_never_records_or_refreshes_its_baseline(run_quant, pytester: pytest.Pytester) -> None:
    failing = GATED.replace("def test_gate(quant_model):\n    pass", "def test_gate(quant_model):\n    raise AssertionError('body')")
    result = run_quant(failing, *REFERENCE, "--snapshot-update")
    result.assert_outcomes(failed=1)
    assert not (pytester.path / SITE / "test_gate[tiny-reference].json").exists()
    assert "not recorded or refreshed: the test body failed" in result.stdout.str()
