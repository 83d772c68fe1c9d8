"""VRAM figures: the footprint on CPU; on GPU resident, load peak and phase peaks from the allocator."""

from __future__ import annotations

import pytest

from pytest_quant.measure.vram import (GENERATE, VramTracker, allocated_bytes, model_device_bytes, nvml_process_bytes,
                                       release)

torch = pytest.importorskip("torch")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def load_tiny(device: str):
    from transformers import AutoModelForCausalLM

    from pytest_quant.models import TINY_DIR

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    return AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=dtype, device_map=device).eval()


def test_cpu_resident_is_the_footprint_and_gpu_figures_are_none() -> None:
    tracker = VramTracker("cpu")
    model = load_tiny("cpu")
    tracker.loaded()
    with tracker.phase(GENERATE):
        pass
    vram = tracker.read(model)
    assert vram.resident_bytes == vram.footprint_bytes == model.get_memory_footprint() > 0
    assert vram.load_peak_bytes is vram.generate_peak_bytes is vram.eval_peak_bytes is vram.nvml_process_bytes is None
    assert vram.phase_peak_bytes == {} and vram.source == "model footprint"
    assert vram.model_device_bytes is None and model_device_bytes(model) == 0  # nothing of it on a GPU


def test_cpu_helpers_are_zero_or_none() -> None:
    assert allocated_bytes("cpu") == 0 and release("cpu") == 0 and nvml_process_bytes("cpu") is None


@gpu
def test_gpu_resident_load_and_phase_peaks() -> None:
    before = release("cuda")
    tracker = VramTracker("cuda")
    model = load_tiny("cuda")
    tracker.loaded()
    with tracker.phase(GENERATE):
        workspace = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
        del workspace
    vram = tracker.read(model)
    assert vram.resident_bytes >= vram.model_device_bytes >= model.get_memory_footprint() * 0.95
    assert vram.load_peak_bytes >= vram.resident_bytes
    assert vram.generate_peak_bytes >= vram.resident_bytes + 64 * 2**20
    assert vram.eval_peak_bytes is None and vram.source == "torch allocator after load"
    del model
    assert release("cuda") - before <= 2**20


def test_referrer_chains_lead_from_a_held_model_to_the_global_that_keeps_it(monkeypatch) -> None:
    import gc
    import sys
    import types
    import weakref

    from pytest_quant.measure.vram import referrer_chains

    class Model:
        pass

    library = types.ModuleType("heldlib")
    monkeypatch.setitem(sys.modules, "heldlib", library)

    def first_import() -> None:
        try:
            raise ModuleNotFoundError("No module named 'llama_cpp'")
        except ModuleNotFoundError as error:
            library.IMPORT_ERROR = error

    def load():
        model = Model()
        first_import()
        return weakref.ref(model)

    model = load()
    gc.collect()
    (chain,) = referrer_chains(model())
    assert chain.startswith("a Model <- frame load (test_measure_vram.py:") and "<- frame first_import (" in chain
    assert chain.endswith("<- a traceback <- exception ModuleNotFoundError: No module named 'llama_cpp' "
                          "<- globals of heldlib")
