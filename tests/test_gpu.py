"""The CUDA paths, run on a GPU machine (they skip where torch sees no CUDA device)."""

from __future__ import annotations

import pytest
import torch

from pytest_quant.session import RELEASE_SLACK_BYTES

from .conftest import FAST

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_gpu_gate_measures_allocator_peak_nvml_and_releases(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import pytest
import torch

@pytest.mark.quant_gpu
@pytest.mark.vram_budget("1 GiB")
@pytest.mark.tokens_per_second(min=1)
@pytest.mark.kl_divergence(max_mean=0.1)
def test_gpu(quant_model, quant_reference):
    assert quant_model.device == "cuda:0"
    assert next(quant_model.model.parameters()).is_cuda
    t = quant_model.throughput
    assert t.repeats == 5 and t.warmup_runs == 3 and t.decode_tokens_per_s > 0
    assert t.decode_mode == ("eager" if quant_model.recipe.name == "bnb-int8" else "cuda-graph"), t.fallback_reason
    vram = quant_model.vram
    assert vram.load_peak_bytes >= vram.resident_bytes > 0
    assert vram.generate_peak_bytes >= vram.resident_bytes  # weights + KV cache + activations
    assert vram.eval_peak_bytes > vram.resident_bytes  # reported, never budgeted
    assert quant_reference.vram.resident_bytes > 0
"""
    )
    # the inner run's first matmul leaves cuBLAS's workspace (32 MiB on Hopper) in this process: make it now
    a = torch.ones(16, 16, device="cuda", dtype=torch.float16)
    (a @ a).sum().item()
    del a
    before = torch.cuda.memory_allocated()
    result = pytester.runpytest(*FAST, "-p", "no:cacheprovider", "--quant-gpu", "-W", "error:pytest-quant:pytest.PytestWarning",
                                "--quant-recipes", "reference,bnb-nf4,bnb-int8")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*pytest-quant summary*", "*tiny*bnb-nf4*cuda:0*Linear4bit*pass*"])
    # every model was released: nothing of theirs is left on the device (the H100 showed exactly 1 MiB
    # left, a library workspace, which is the plugin's own release slack)
    assert torch.cuda.memory_allocated() - before <= RELEASE_SLACK_BYTES


def test_gpu_reference_is_16_bit(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import torch

def test_dtype(quant_model):
    assert next(quant_model.model.parameters()).dtype == torch.float16
"""
    )
    result = pytester.runpytest(*FAST, "-p", "no:cacheprovider", "--quant-gpu", "--quant-recipes", "reference")
    result.assert_outcomes(passed=1)


def test_bad_device_index_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--quant-gpu", "--quant-device", f"cuda:{torch.cuda.device_count()}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*only * CUDA device(s) found*"])


OOM_CONFTEST = """
import gc
import json

import pytest
import torch


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    '''Leave bnb-nf4 2 MiB above what the allocator holds, so that loading it runs out of memory.'''
    if fixturedef.argname != "quant_model" or request.getfixturevalue("quant_pair").recipe.name != "bnb-nf4":
        return (yield)
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + (2 << 20)) / total)
    try:
        return (yield)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        gc.collect()
        torch.cuda.empty_cache()
        with open("returned.json", "w") as f:
            json.dump({"before": before, "after": torch.cuda.memory_allocated()}, f)
"""

VRAM_TO_FILE = """
import json
import pathlib


def test_vram(quant_model):
    v = quant_model.vram
    pathlib.Path(f"vram-{quant_model.recipe.name}.json").write_text(
        json.dumps({"resident": v.resident_bytes, "load_peak": v.load_peak_bytes}))
"""


def test_out_of_memory_in_one_recipe_fails_it_and_leaves_the_next_measured_as_without_it(
        pytester: pytest.Pytester) -> None:
    """Issue 14: an OOM fails that recipe's tests with the OOM named; its memory comes back; the next recipe's
    figures equal those of a run without the failing recipe."""
    import json

    pytester.makeconftest(OOM_CONFTEST)
    pytester.makepyfile(test_oom=VRAM_TO_FILE)
    args = (*FAST, "-p", "no:cacheprovider", "--quant-gpu")
    try:
        result = pytester.runpytest(*args, "--quant-recipes", "reference,bnb-nf4,bnb-int8")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_vram[[]tiny-bnb-nf4[]]*", "*OutOfMemoryError*CUDA out of memory*"])
    returned = json.loads((pytester.path / "returned.json").read_text())
    assert returned["after"] - returned["before"] <= RELEASE_SLACK_BYTES
    with_oom = json.loads((pytester.path / "vram-bnb-int8.json").read_text())
    result = pytester.runpytest(*args, "--quant-recipes", "reference,bnb-int8")
    result.assert_outcomes(passed=2)
    without = json.loads((pytester.path / "vram-bnb-int8.json").read_text())
    assert with_oom["resident"] == without["resident"]
    assert abs(with_oom["load_peak"] - without["load_peak"]) <= RELEASE_SLACK_BYTES


def test_a_model_kept_in_a_global_is_named_by_the_release_warning(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leak="""
KEPT = None


def test_keep(quant_model):
    global KEPT
    KEPT = quant_model.model
""")
    result = pytester.runpytest(*FAST, "-p", "no:cacheprovider", "--quant-gpu", "--quant-recipes", "reference,bnb-nf4")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*GPU memory still allocated after releasing tiny-reference; the model is still "
                                 "held by test_leak.KEPT, and later VRAM figures may be inflated*"])
