"""Several GPUs on one host, for real: one xdist worker per GPU, and a model spread over two GPUs. They skip
where torch sees fewer CUDA devices than they need (the fake-host versions run everywhere: tests/test_workers.py)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from .conftest import FAST

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
needs_xdist = pytest.mark.skipif(not importlib.util.find_spec("xdist"), reason="needs pytest-xdist")

GATED = """
import pytest

@pytest.mark.vram_budget(ratio=0.9)
@pytest.mark.kl_divergence(max_mean=0.1)
def test_gate(quant_model):
    pass
"""


@needs_xdist
@pytest.mark.skipif(GPUS < 1, reason="needs a CUDA device")
def test_one_worker_per_gpu_each_row_on_its_own_gpu(pytester: pytest.Pytester, tmp_path) -> None:
    pytester.makepyfile(test_repo=GATED)
    report = tmp_path / "r.json"
    result = pytester.runpytest_subprocess(*FAST, "-p", "no:cacheprovider", "--quant-gpu", "-n", "auto",
                                           "--quant-recipes", "bnb-nf4,bnb-int8,bnb-fp4", f"--quant-report={report}")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([f"*{GPUS} xdist worker(s), GPUs*", f"*created: {GPUS}/{GPUS} workers*"])
    rows = json.loads(report.read_text())["results"]
    assert {r["device"] for r in rows} <= {f"cuda:{i}" for i in range(GPUS)}
    assert len({r["device"] for r in rows}) == min(GPUS, 3)  # the pairs spread over the GPUs
    assert all(r["result"] == "pass" and r["vram_resident_bytes"] > 0 and r["hardware"] for r in rows)


@pytest.mark.skipif(GPUS < 2, reason="needs two CUDA devices")
def test_a_model_spread_over_two_gpus_is_measured_on_both(pytester: pytest.Pytester, tmp_path) -> None:
    pytester.makepyfile(test_repo=GATED)
    report = tmp_path / "r.json"
    result = pytester.runpytest(*FAST, "-p", "no:cacheprovider", "--quant-gpu", "--quant-device", "auto",
                                "--quant-recipes", "bnb-nf4", f"--quant-report={report}")
    result.assert_outcomes(passed=1)
    (row,) = json.loads(report.read_text())["results"]
    assert row["device"] == "+".join(f"cuda:{i}" for i in range(GPUS))
    assert row["decode_mode"] == "eager"
    assert row["vram_resident_by_device"].count("cuda:") == GPUS
