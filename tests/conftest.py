"""Shared helpers for the plugin's own tests."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import pytest

# pytester's in-process runs put sys.modules back as it was after each run. torch and the libraries
# built on it register native operators when first imported and cannot be imported a second time into
# one process, so library modules imported during a run are kept; only the runs' own test modules and
# conftests are dropped.
import torch  # noqa: F401


def _keep_library_modules(name: str) -> bool:
    return not name.startswith(("test_", "conftest"))


@pytest.fixture(autouse=True)
def _pytester_keeps_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        pytest.Pytester,
        "_Pytester__take_sys_modules_snapshot",
        lambda self: _pytester_module.SysModulesSnapshot(preserve=_keep_library_modules),
    )


from _pytest import pytester as _pytester_module  # noqa: E402

# Every model a session closes is followed by a full garbage collection (hardware.free_device_memory), and pytest
# collects again at the end of each in-process session; in this one long process each of them traversed the
# libraries' half a million objects (0.4 s a collection). The libraries imported here are collected once and moved
# out of the collector's sight (gc.freeze) before any test module is imported: the test modules' globals, and
# everything a test makes (models included), stay in sight of the collector and of gc.get_referrers.
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402,F401
from transformers.models.llama import modeling_llama  # noqa: E402,F401

gc.collect()
gc.freeze()


# Small and fast: enough tokens to tell recipes apart, few enough for a 2-core CI machine.
FAST = ("--quant-eval-tokens", "1024")


@pytest.fixture
def run_quant(pytester: pytest.Pytester):
    """Run pytest in-process on a test file written into a fresh directory."""

    def run(source: str, *args: str, ini: str | None = None) -> pytest.RunResult:
        pytester.makepyfile(test_model_repo=source)
        if ini is not None:
            pytester.makeini(ini)
        return pytester.runpytest(*FAST, "-p", "no:cacheprovider", *args)

    return run


@pytest.fixture(scope="module")
def tiny():
    """The embedded model in float32 on CPU and its tokenizer, loaded once per test module."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_quant.models import TINY_DIR

    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    model = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32).eval()
    return model, tokenizer


# -- one real xdist session, shared -------------------------------------------------------------------------------
# Four tests check what a real two-worker session does (tests/test_workers.py: a pair's tests share a worker and the
# controller merges rows and baselines; tests/test_options.py: the summary gathers the workers' figures;
# tests/test_report_files.py: the controller writes every row once; tests/test_baselines.py: workers write and
# compare baselines). Each worker imports torch and loads the models, so the four share one session (and its
# second run, gated by the baselines the first wrote): the first of them to run makes it, in its own pytester
# folder and in-process (as the baselines test did), and each asserts on it what it asserted on its own session.
XDIST_SOURCE = '''
import os
import pytest


def where(record_property):
    record_property("worker", os.environ["PYTEST_XDIST_WORKER"])


@pytest.mark.perplexity_delta(max_rel=0.5)
def test_gate(quant_model, record_property):
    where(record_property)


@pytest.mark.perplexity_delta(vs="baseline")
def test_same_as_before(quant_model, record_property):
    where(record_property)


@pytest.mark.perplexity_delta(max=100)
def test_summary_gate(quant_model, record_property):
    where(record_property)


@pytest.mark.vram_budget("1 TiB")
@pytest.mark.perplexity_delta(max=100)
def test_gate_with_memory(quant_model, record_property):
    where(record_property)
''' + "".join(f'''

@pytest.mark.vram_budget(vs="baseline")
def test_{name}(quant_model, record_property):
    where(record_property)
''' for name in "abcd")
XDIST_RECIPES = ("reference", "bnb-nf4", "bnb-int8")
XDIST_TESTS = ("test_gate", "test_same_as_before", "test_summary_gate", "test_gate_with_memory", "test_a", "test_b",
               "test_c", "test_d")
XDIST_BASELINED = ("test_same_as_before", "test_a", "test_b", "test_c", "test_d")  # those that compare with a baseline
XDIST_SITE = ("baselines", "tiny", "cpu")
XDIST_OTHER_GPU = ("baselines", "tiny", "nvidia-h100-80gb-hbm3")


@dataclass
class XdistSession:
    path: Path  # the pytester folder it ran in
    report: Path  # --quant-report of both runs
    first: pytest.RunResult  # --snapshot-update, with GITHUB_STEP_SUMMARY set
    again: pytest.RunResult  # the same arguments without --snapshot-update
    report_doc: dict  # the report, a copy of its plot, the step summary, the junit test cases and the baselines,
    first_plot: Path | None  # each as the first run left them
    step_summary: str
    junit_cases: list[tuple[str, dict[str, str]]]  # (test case name, {property: value})
    baselines: dict[str, str]  # file name under baselines/tiny/cpu -> its text
    other_gpu_baseline: str  # the other GPU kind's baseline the first run had to keep, as it then was
    recipes: tuple[str, ...] = XDIST_RECIPES
    tests: tuple[str, ...] = XDIST_TESTS
    baselined: tuple[str, ...] = XDIST_BASELINED

    @property
    def passed(self) -> int:
        """Every test of every pair: what each run passes."""
        return len(self.tests) * len(self.recipes)

    def baseline_names(self) -> list[str]:
        """The baseline files a --snapshot-update writes under baselines/tiny/cpu, sorted."""
        return sorted(f"{test}[tiny-{recipe}].json" for test in self.baselined for recipe in self.recipes)


XDIST_KEY = pytest.StashKey[XdistSession]()


def xdist_baseline(metrics: dict, device: str = "cpu") -> str:
    from pytest_quant.baselines.record import dumps

    return dumps({"format_version": 1, "context": {"model": "tiny", "recipe": "reference", "device": device},
                  "metrics": metrics})


@pytest.fixture
def xdist_session(request: pytest.FixtureRequest) -> XdistSession:
    """The shared two-worker session over reference, bnb-nf4 and bnb-int8 (made by the first test that asks)."""
    pytest.importorskip("xdist")
    pytest.importorskip("bitsandbytes")
    if XDIST_KEY not in request.config.stash:
        request.config.stash[XDIST_KEY] = _run_xdist_session(request.getfixturevalue("pytester"))
    return request.config.stash[XDIST_KEY]


def _run_xdist_session(pytester: pytest.Pytester) -> XdistSession:
    import json
    import shutil
    import xml.etree.ElementTree as ET

    pytester.makepyfile(test_model_repo=XDIST_SOURCE)
    other = pytester.path.joinpath(*XDIST_OTHER_GPU)
    other.mkdir(parents=True)
    (other / "test_a[tiny-reference].json").write_text(xdist_baseline({"vram_resident_bytes": 1}, device="cuda:0"))
    site = pytester.path.joinpath(*XDIST_SITE)
    site.mkdir(parents=True)
    (site / "test_gone[tiny-reference].json").write_text(xdist_baseline({"vram_resident_bytes": 1}))  # an orphan
    report = pytester.path / "r.json"
    summary = pytester.path / "step-summary.md"
    args = (*FAST, "-p", "no:cacheprovider", "-n", "2", "--quant-recipes", ",".join(XDIST_RECIPES),
            f"--quant-report={report}", "--junitxml=junit.xml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GITHUB_STEP_SUMMARY", str(summary))
        first = pytester.runpytest(*args, "--snapshot-update")
    plot = report.with_suffix(".png")
    first_plot = Path(shutil.copy(plot, pytester.path / "first-run-plot.png")) if plot.is_file() else None
    cases = [(case.get("name"), {p.get("name"): p.get("value") for p in case.iter("property")})
             for case in ET.parse(pytester.path / "junit.xml").iter("testcase")]
    session = XdistSession(
        path=pytester.path, report=report, first=first, again=None,
        report_doc=json.loads(report.read_text()) if report.is_file() else {}, first_plot=first_plot,
        step_summary=summary.read_text() if summary.is_file() else "", junit_cases=cases,
        baselines={p.name: p.read_text() for p in sorted(site.iterdir())},
        other_gpu_baseline=(other / "test_a[tiny-reference].json").read_text())
    session.again = pytester.runpytest(*args)  # the baselines the workers wrote gate the next run
    return session
