"""One GPU per pytest-xdist worker: the plan, the controller's hand-out, the worker's CUDA_VISIBLE_DEVICES, and
the controller's merge of what the workers measured. GPUs are faked on CPU by a conftest that stands in for
torch.cuda's device queries (the real single-GPU run is tests/test_gpu.py, on a GPU runner)."""

from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_quant import hardware, workers

needs_xdist = pytest.mark.skipif(not importlib.util.find_spec("xdist"), reason="needs pytest-xdist")

# conftest of a fake host (two GPUs, or those CUDA_VISIBLE_DEVICES names): the GPU names by host index; torch.cuda answers through CUDA_VISIBLE_DEVICES as the
# driver would (set once, read when CUDA starts), and never starts CUDA
FAKE_GPUS = """
import os
import torch

NAMES = {"0": "NVIDIA H100 80GB HBM3", "1": "NVIDIA A10G", "2": "NVIDIA H100 80GB HBM3", "3": "NVIDIA A10G"}


def _visible():
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [v for v in value.split(",") if v] if value is not None else ["0", "1"]  # two GPUs unless told


torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: len(_visible())
torch.cuda.get_device_name = lambda index=0: NAMES[_visible()[index]]
"""

WHERE = """
import os
import pytest
from pytest_quant.baselines.settings import SETTINGS_KEY


@pytest.mark.parametrize("i", range(6))
def test_where(i, request, record_property):
    record_property("worker", os.environ["PYTEST_XDIST_WORKER"])
    record_property("visible", os.environ["CUDA_VISIBLE_DEVICES"])
    record_property("hardware", request.config.stash[SETTINGS_KEY].hardware)
"""


def junit_properties(path: Path) -> list[dict[str, str]]:
    return [{p.get("name"): p.get("value") for p in case.iter("property")} for case in ET.parse(path).iter("testcase")]


# -- the plan ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [
    ("0,1", ("0", "1")),
    (" 2 , 3 ", ("2", "3")),
    ("", ()),
    ("1,-1,2", ("1",)),  # CUDA ignores the entries after an invalid one
    ("GPU-8f1e,GPU-77aa", ("GPU-8f1e", "GPU-77aa")),
])
def test_visible_gpus_follow_cuda_visible_devices(value: str, expected: tuple[str, ...]) -> None:
    assert workers.visible_gpus({"CUDA_VISIBLE_DEVICES": value}) == expected


def test_one_gpu_per_worker_or_an_equal_group_each_when_models_are_spread() -> None:
    visible = ("0", "1", "2", "3", "4")
    assert workers.plan(2, visible, shard=False) == (("0",), ("1",))
    assert workers.plan(2, visible, shard=True) == (("0", "1"), ("2", "3"))  # GPU 4 left idle
    with pytest.raises(ValueError, match="3 workers need 3 GPUs"):
        workers.plan(3, ("0", "1"), shard=False)


@pytest.mark.parametrize(("nodeid", "scope"), [
    ("t.py::test_q[tiny-bnb-nf4]", "tiny-bnb-nf4"),
    ("t.py::test_q[tiny-bnb-nf4-dq-3]", "tiny-bnb-nf4-dq"),  # the longest pair id that fits
    ("t.py::test_q[3-tiny-bnb-nf4]", "tiny-bnb-nf4"),
    ("t.py::test_q[tiny-bnb-nf4x]", "t.py::test_q[tiny-bnb-nf4x]"),
    ("t.py::test_plain", "t.py::test_plain"),
])
def test_tests_are_scheduled_by_their_model_and_recipe(nodeid: str, scope: str) -> None:
    assert workers.pair_scope(nodeid, ("tiny-bnb-nf4", "tiny-bnb-nf4-dq", "tiny-reference")) == scope


def test_a_worker_replacing_a_crashed_one_gets_its_gpu_and_no_gpu_goes_to_two_workers() -> None:
    assignment = workers.GpuAssignment((("0",), ("1",)))

    def node(name: str) -> SimpleNamespace:
        return SimpleNamespace(gateway=SimpleNamespace(id=name), workerinput={})

    gw0, gw1 = node("gw0"), node("gw1")
    assignment.pytest_configure_node(gw0)
    assignment.pytest_configure_node(gw1)
    assert (gw0.workerinput[workers.WORKERINPUT_KEY], gw1.workerinput[workers.WORKERINPUT_KEY]) == ("0", "1")
    with pytest.raises(RuntimeError, match="no free GPU for worker gw2"):
        assignment.pytest_configure_node(node("gw2"))
    assignment.pytest_testnodedown(gw0, error="crashed")
    gw2 = node("gw2")
    assignment.pytest_configure_node(gw2)
    assert gw2.workerinput[workers.WORKERINPUT_KEY] == "0"


@pytest.mark.parametrize(("visible", "device", "expected"), [
    (None, "cuda:0", "cuda:0"),
    ("3", "cuda:0", "cuda:3"),
    ("2,3", "cuda:1", "cuda:3"),
    ("GPU-8f1e", "cuda:0", "cuda:0 (GPU-8f1e)"),
    ("-1,3", "cuda:0", "cuda:0"),  # no valid entry: nothing to map
    ("3", "cpu", "cpu"),
])
def test_reports_name_the_gpu_as_the_host_numbers_it(visible, device: str, expected: str) -> None:
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert hardware.host_device(device, environ) == expected


def test_a_model_spread_over_gpus_has_a_key_naming_them_all(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {"cuda:0": "NVIDIA H100 80GB HBM3", "cuda:1": "NVIDIA H100 80GB HBM3", "cuda:2": "NVIDIA A10G"}
    monkeypatch.setattr(hardware, "hardware_name", names.__getitem__)
    assert hardware.placement_key(("cuda:0",)) == "nvidia-h100-80gb-hbm3"
    assert hardware.placement_key(("cuda:0", "cuda:1")) == "nvidia-h100-80gb-hbm3-x2"
    assert hardware.placement_key(("cuda:0", "cuda:2")) == "nvidia-h100-80gb-hbm3+nvidia-a10g"


# -- through pytest and xdist, on a fake host ---------------------------------------------------------------------
@needs_xdist
def test_each_worker_gets_its_own_gpu_and_its_own_hardware_key(pytester: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    pytester.makeconftest(FAKE_GPUS)
    pytester.makepyfile(test_where=WHERE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "auto", "--quant-gpu",
                                           "--quant-recipes", "reference", "--junitxml=junit.xml")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*2 xdist worker(s), GPUs 0 | 1*", "*created: 2/2 workers*"])
    rows = junit_properties(pytester.path / "junit.xml")
    by_worker = {r["worker"]: (r["visible"], r["hardware"]) for r in rows}
    assert len({(r["worker"], r["visible"]) for r in rows}) == len(by_worker)  # a worker keeps its GPU
    assert sorted(by_worker.values()) == [("0", "nvidia-h100-80gb-hbm3"), ("1", "nvidia-a10g")]


@needs_xdist
def test_spread_models_give_each_worker_a_group_of_gpus(pytester: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    pytester.makeconftest(FAKE_GPUS)
    pytester.makepyfile(test_where=WHERE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--quant-gpu", "--quant-device",
                                           "auto", "--quant-recipes", "reference", "--junitxml=junit.xml")
    result.assert_outcomes(passed=6)
    rows = junit_properties(pytester.path / "junit.xml")
    assert sorted({(r["visible"], r["hardware"]) for r in rows}) == [
        ("0,1", "nvidia-h100-80gb-hbm3+nvidia-a10g"), ("2,3", "nvidia-h100-80gb-hbm3+nvidia-a10g")]


@needs_xdist
@pytest.mark.parametrize(("args", "message"), [
    (("-n", "3"), "*-n 3 with --quant-gpu: 3 workers need 3 GPUs, found 2 GPUs visible (CUDA_VISIBLE_DEVICES='0,1'); "
                  "use -n 2 or fewer, or -n auto (one worker per GPU)*"),
    (("-n", "2", "--quant-device", "cuda:1"), "*--quant-device cuda:1 puts all 2 xdist workers on one GPU; drop it*"),
])
def test_workers_that_cannot_each_have_a_gpu_are_a_usage_error(pytester: pytest.Pytester, monkeypatch, args,
                                                                 message: str) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    pytester.makeconftest(FAKE_GPUS)
    pytester.makepyfile(test_where=WHERE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--quant-gpu", "--quant-recipes", "reference",
                                           *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_auto_device_needs_gpus(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_where="def test_x(): pass")
    result = pytester.runpytest("-p", "no:cacheprovider", "--quant-device", "auto")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--quant-device auto spreads each model over the visible GPUs: it needs --quant-gpu*"])


# -- the controller merges what the workers measured ----------------------------------------------------------------
@needs_xdist
def test_a_pairs_tests_share_a_worker_and_the_controller_merges_rows_and_baselines(xdist_session) -> None:
    # the shared two-worker session of tests/conftest.py: reference, bnb-nf4 and bnb-int8, --snapshot-update, then
    # again with the baselines the workers wrote
    result = xdist_session.first
    result.assert_outcomes(passed=xdist_session.passed)
    result.stdout.fnmatch_lines(["*each model x recipe runs whole on one xdist worker*"])
    workers_of: dict[str, set[str]] = {}
    for name, props in xdist_session.junit_cases:
        pair = name.split("[", 1)[1].split("]", 1)[0]
        workers_of.setdefault(pair, set()).update(v for k, v in props.items() if k == "worker")
    assert sorted(workers_of) == ["tiny-bnb-int8", "tiny-bnb-nf4", "tiny-reference"]
    assert all(len(w) == 1 for w in workers_of.values())  # a quantized model loads once, on one worker
    assert sorted((r["recipe"], r["device"], r["result"]) for r in xdist_session.report_doc["results"]) == [
        ("bnb-int8", "cpu", "pass"), ("bnb-nf4", "cpu", "pass"), ("reference", "cpu", "pass")]
    assert sorted(xdist_session.baselines) == xdist_session.baseline_names()
    again = xdist_session.again  # the baselines the workers wrote gate the next run
    again.assert_outcomes(passed=xdist_session.passed)
    assert "unused" not in again.stdout.str().lower()


# -- a model spread over GPUs: every GPU counted, the figures summed ------------------------------------------------
class FakeAllocator:
    """torch.cuda's allocator counters for two GPUs, moved by hand."""

    def __init__(self) -> None:
        self.allocated = {"cuda:0": 100, "cuda:1": 50}
        self.peak = dict(self.allocated)

    def set(self, device: str, value: int) -> None:
        self.allocated[device] = value
        self.peak[device] = max(self.peak[device], value)

    def reset_peak(self, device) -> None:
        self.peak[str(device)] = self.allocated[str(device)]


def test_a_spread_model_is_counted_on_every_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from pytest_quant.measure import vram

    fake = FakeAllocator()
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d: fake.allocated[str(d)])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: fake.peak[str(d)])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", fake.reset_peak)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(hardware, "warm_cublas", lambda d: None)
    monkeypatch.setattr(vram, "nvml_process_bytes", lambda d: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # a worker given host GPUs 2 and 3

    tracker = vram.VramTracker("cuda:0", ("cuda:0", "cuda:1"))
    fake.set("cuda:0", 1100)  # loading: 1000 resident on the first GPU after a transient 1500
    fake.set("cuda:0", 1600)
    fake.set("cuda:0", 1100)
    fake.set("cuda:1", 850)  # 800 on the second
    tracker.loaded()
    with tracker.phase(vram.GENERATE):
        fake.set("cuda:0", 1300)
        fake.set("cuda:1", 900)
    measured = tracker.read(SimpleNamespace(get_memory_footprint=lambda: 1790))
    assert measured.resident_bytes == 1800
    assert measured.resident_bytes_by_device == {"cuda:2": 1000, "cuda:3": 800}
    assert measured.load_peak_bytes == 1500 + 800
    assert measured.generate_peak_bytes == 1200 + 850
    assert tracker.allocated_before_bytes == 150

    from pytest_quant.metrics import Measurements, flat

    row = flat(Measurements("m", "r", "cuda:2+cuda:3", vram=measured))
    assert row["vram_resident_bytes"] == 1800
    assert row["vram_resident_by_device"] == "cuda:2 1000 B, cuda:3 800 B"


def test_the_per_gpu_column_is_in_the_report_files_only_when_a_model_was_spread() -> None:
    from pytest_quant.report.columns import cells

    one = {"model": "m", "recipe": "r", "vram_resident_bytes": 1800}
    spread = dict(one, vram_resident_by_device="cuda:2 1000 B, cuda:3 800 B")
    assert "VRAM resident per GPU" not in cells({"a": one})[0]
    header, body, _ = cells({"a": one, "b": spread})
    column = header.index("VRAM resident per GPU")
    assert [row[column] for row in body] == ["-", "cuda:2 1000 B, cuda:3 800 B"]
    assert "per GPU" not in cells({"b": spread}, terminal=True)[0]  # the terminal keeps its width
