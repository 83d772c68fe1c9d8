"""The backends of issue 13 on CPU: each loads the embedded tiny model, runs a 64-token forward and one cached
decode step, stays close to the fp32 reference and is smaller than it; each library's absence is a skip
naming the extra. Also: bitsandbytes' ``dequantize()`` gives back the quantized model's logits and the
unquantized footprint.

Requests are duck-typed stand-ins (``model_path``, ``recipe`` with ``options``/``get``, ``device``,
``cache_dir``, ``calibration_text``, ``before_load``): what every backend's ``load`` reads.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_quant.models import TINY_DIR, embedded_eval_text

TOKENS = 64


@dataclass(frozen=True)
class StubRecipe:
    settings: dict[str, Any]
    name: str = "stub"

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.settings)


@dataclass
class StubRequest:
    recipe: StubRecipe
    model_path: Path = TINY_DIR
    device: str = "cpu"
    cache_dir: Path | None = None
    calibration_text: Path | None = None
    before_load_calls: list = field(default_factory=list)
    device_map: str | None = None
    trust_remote_code: bool = False

    @property
    def placement(self) -> str:  # as LoadRequest's
        return self.device_map or self.device

    def before_load(self) -> None:
        self.before_load_calls.append(True)


def request_for(device: str = "cpu", cache_dir: Path | None = None, **settings) -> StubRequest:
    return StubRequest(StubRecipe(settings), device=device, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def reference():
    """fp32 logits of the tiny model over the first 64 tokens of the eval text, and its footprint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    text = embedded_eval_text().read_text(encoding="utf-8")[: TOKENS * 16]
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :TOKENS]
    model = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32).eval()
    with torch.inference_mode():
        logits = model(ids).logits.float()
    return {"ids": ids, "logits": logits, "footprint": model.get_memory_footprint()}


def check_loaded(loaded, reference, min_top1: float = 0.5, trim_atol: float = 1e-3) -> float:
    """A forward over 64 tokens, one cached decode step; logits finite, top-1 close to fp32, smaller.

    ``trim_atol``: how far the last 8 positions' logits may move when only they are asked for. Per-tensor
    dynamic activation quantization (torch.ao, ONNX Runtime) takes one scale over every row it is given,
    so the lm_head's input scale, and the logits, depend on how many rows there are.
    """
    import torch

    model, ids = loaded.model, reference["ids"]
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        logits = out.logits.float()
        assert logits.shape == reference["logits"].shape
        assert torch.isfinite(logits).all()
        step = model(out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values, use_cache=True)
        assert step.logits.shape[1] == 1 and torch.isfinite(step.logits).all()
        trimmed = model(input_ids=ids, use_cache=False, logits_to_keep=8).logits
        assert trimmed.shape[1] == 8
        torch.testing.assert_close(trimmed.float(), logits[:, -8:], atol=trim_atol, rtol=1e-3)
    top1 = float((logits.argmax(-1) == reference["logits"].argmax(-1)).float().mean())
    assert top1 > min_top1, f"top-1 agreement with fp32 {top1:.2%}"
    footprint = int(model.get_memory_footprint())
    assert footprint < reference["footprint"], f"footprint {footprint} not below fp32 {reference['footprint']}"
    # Measured at load; INC's layers add a few KiB of buffers on their first forward (0.25% on tiny).
    assert footprint == pytest.approx(loaded.notes.get("footprint_bytes", footprint), rel=0.01)
    return top1


# -- light imports and validation --------------------------------------------------------------------------

MODULES = {
    "torch_dynamic": (),
    "torchao": ("torchao",),
    "onnxruntime": ("onnxruntime", "onnx", "onnxscript"),
    "neural_compressor": ("neural_compressor",),
    "modelopt": ("modelopt",),
}


def test_backend_modules_import_no_library():
    """Each module can be imported (its FIELDS, validate and install hint read) without its library."""
    heavy = sorted({name for names in MODULES.values() for name in names})
    code = (
        "import sys\n"
        + "".join(f"import pytest_quant.backends.{m}\n" for m in MODULES)
        + f"loaded = [n for n in {heavy!r} if n in sys.modules]\n"
        + "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "module, settings, words",
    [
        ("torch_dynamic", {"api": "torch.fx"}, ["api", "torch.fx", "torchao"]),
        ("torch_dynamic", {"api": "torchao", "weight_dtype": "float16"}, ["weight_dtype", "float16", "qint8"]),
        ("torch_dynamic", {"bits": 4}, ["bits", "accepted"]),
        ("torchao", {"quant_type": "int3"}, ["quant_type", "int3", "int8_weight_only"]),
        ("torchao", {"quant_type": "int8_dynamic_activation_int8_weight", "group_size": 64}, ["group_size"]),
        ("torchao", {"quant_type": "intx_weight_only", "bits": 9}, ["bits", "9"]),
        ("onnxruntime", {"weight_type": "QInt4"}, ["weight_type", "QInt4", "QInt8"]),
        ("onnxruntime", {"opset": 9}, ["opset", "9"]),
        ("neural_compressor", {"algorithm": "awq"}, ["algorithm", "awq", "rtn"]),
        ("neural_compressor", {"bits": 5}, ["bits", "5"]),
        ("neural_compressor", {"algorithm": "rtn", "calibration_samples": 8}, ["calibration_samples", "rtn"]),
        ("modelopt", {"format": "nvfp4"}, ["format", "nvfp4", "fp8"]),
    ],
)
def test_validate_names_field_value_and_accepted(module, settings, words):
    import importlib

    backend = importlib.import_module(f"pytest_quant.backends.{module}")
    with pytest.raises(ValueError) as info:
        backend.validate(settings)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_builtin_recipes_validate(module):
    import importlib

    backend = importlib.import_module(f"pytest_quant.backends.{module}")
    for name, (description, settings) in backend.RECIPES.items():
        assert description and name == name.lower()
        backend.validate(dict(settings))
        assert set(settings) <= backend.FIELDS


# -- PyTorch dynamic int8 ------------------------------------------------------------------------------------

def test_torch_dynamic_int8(reference):
    from pytest_quant.backends import torch_dynamic

    loaded = torch_dynamic.load(request_for(api="torch.ao"))
    assert loaded.kernel == "DynamicQuantizedLinear"
    assert "deprecated" in loaded.notes["deprecation"]  # torch deprecates torch.ao.quantization
    check_loaded(loaded, reference, min_top1=0.8, trim_atol=0.5)
    # int8 linears (lm_head included, untied) + the fp32 embedding: about 15 MiB of fp32's 27.5
    assert loaded.model.get_memory_footprint() < 0.6 * reference["footprint"]


def test_torch_dynamic_int8_torchao_successor(reference):
    pytest.importorskip("torchao", reason="pip install 'pytest-quant[torchao]'")
    from pytest_quant.backends import torch_dynamic

    loaded = torch_dynamic.load(request_for(api="torchao"))
    assert loaded.kernel.startswith("Linear(")
    check_loaded(loaded, reference, min_top1=0.8)


def test_torch_dynamic_refuses_cuda():
    from pytest_quant.backends import torch_dynamic

    with pytest.raises(ValueError, match="CPU only"):
        torch_dynamic.load(request_for(device="cuda:0"))


# -- torchao ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "settings",
    [
        {"quant_type": "int8_weight_only"},
        {"quant_type": "int8_dynamic_activation_int8_weight"},
        {"quant_type": "intx_weight_only", "bits": 4, "group_size": 128},
        {"quant_type": "float8_weight_only"},
    ],
    ids=lambda s: s["quant_type"],
)
def test_torchao_on_cpu(reference, settings):
    pytest.importorskip("torchao", reason="pip install 'pytest-quant[torchao]'")
    from pytest_quant.backends import torchao

    loaded = torchao.load(request_for(**settings))
    assert loaded.kernel.startswith("Linear(")
    check_loaded(loaded, reference, min_top1=0.8)


@pytest.mark.parametrize("quant_type", ["int4_weight_only", "float8_dynamic_activation_float8_weight"])
def test_torchao_cuda_only_types_fail_clearly_on_cpu(quant_type):
    from pytest_quant.backends import torchao

    with pytest.raises(ValueError, match="needs CUDA"):
        torchao.load(request_for(quant_type=quant_type))


# -- ONNX Runtime --------------------------------------------------------------------------------------------

@pytest.mark.slow  # the export takes 1-2.5 minutes on 2 cores; the shipped gate (main command) runs it cold
def test_onnxruntime_dynamic_int8_and_its_cache(reference, tmp_path):
    for name in ("onnxruntime", "onnx", "onnxscript"):
        pytest.importorskip(name, reason="pip install 'pytest-quant[onnx]'")
    from pytest_quant.backends import onnxruntime

    first = onnxruntime.load(request_for(cache_dir=tmp_path, weight_type="QInt8"))
    assert first.cache == "miss" and first.quantize_seconds > 0
    assert "MatMulInteger" in first.kernel
    assert first.model.generation_config.eos_token_id == 0  # tiny's, as greedy generation reads it
    check_loaded(first, reference, min_top1=0.8, trim_atol=0.5)
    second = onnxruntime.load(request_for(cache_dir=tmp_path, weight_type="QInt8"))
    assert second.cache == "hit" and second.notes["onnx_dir"] == first.notes["onnx_dir"]
    with __import__("torch").inference_mode():
        a = first.model(input_ids=reference["ids"]).logits
        b = second.model(input_ids=reference["ids"]).logits
    assert (a == b).all()
    assert not list(tmp_path.joinpath("onnxruntime").glob(".staging-*"))


def test_onnxruntime_refuses_cuda():
    from pytest_quant.backends import onnxruntime

    with pytest.raises(ValueError, match="CPU"):
        onnxruntime.load(request_for(device="cuda:0"))


# -- Intel Neural Compressor ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "settings, min_top1",
    [({"algorithm": "rtn", "bits": 4}, 0.7), ({"algorithm": "rtn", "bits": 8}, 0.9),
     pytest.param({"algorithm": "gptq", "bits": 4, "calibration_samples": 4, "calibration_seq_len": 64}, 0.7,
                  marks=pytest.mark.slow)],  # about 2.5 minutes on 2 cores
    ids=["rtn-w4", "rtn-w8", "gptq-w4"],
)
def test_neural_compressor_weight_only(reference, settings, min_top1):
    pytest.importorskip("neural_compressor.torch", reason="pip install 'pytest-quant[inc]'")
    from pytest_quant.backends import neural_compressor

    request = request_for(**settings)
    loaded = neural_compressor.load(request)
    assert loaded.kernel == "INCWeightOnlyLinear"
    assert request.before_load_calls == [True]
    check_loaded(loaded, reference, min_top1=min_top1)


# -- NVIDIA Model Optimizer ------------------------------------------------------------------------------------

def test_modelopt_imports_and_needs_cuda():
    pytest.importorskip("modelopt.torch.quantization", reason="pip install 'pytest-quant[modelopt]'")
    from pytest_quant.backends import modelopt

    with pytest.raises(ValueError, match="needs CUDA"):
        modelopt.load(request_for(format="fp8"))
