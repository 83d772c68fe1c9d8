"""The bitsandbytes backend's ``dequantize = true``: loaded through the plugin's backend registry on CPU, the
dequantized model gives back the 4-bit model's logits and the unquantized footprint; weights bitsandbytes
repacked for its AVX512-BF16 CPU kernel (at a layer's first eval forward) dequantize to the weights that kernel
multiplies by; a dequantize that does not reproduce the quantized layer is an error naming the versions.

Measured on an AVX512-BF16 CPU (bitsandbytes 0.50.2, transformers 5.24.0, torch 2.14.1), tiny model, logits
scale ~17: the plugin's dequantized logits equal the 4-bit standard-kernel logits exactly (max |diff| 0.0); the
repacking (bf16) kernel's own logits differ from those by 0.044 (nf4) / 0.050 (fp4); transformers'
``dequantize()`` of repacked weights alone gave max |diff| ~21.
"""

from __future__ import annotations

import pytest

from pytest_quant import backends
from pytest_quant.models import TINY_DIR, embedded_eval_text
from pytest_quant.recipes import Recipe, _frozen

pytest.importorskip("bitsandbytes", reason="pip install 'pytest-quant[bnb]'")
torch = pytest.importorskip("torch")
bnb_backend = pytest.importorskip("pytest_quant.backends.bitsandbytes")

TOKENS = 64


@pytest.fixture(scope="module")
def reference():
    """The first 64 tokens of the eval text and the fp32 model's footprint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    text = embedded_eval_text().read_text(encoding="utf-8")[: TOKENS * 16]
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :TOKENS]
    model = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32)
    return {"ids": ids, "footprint": model.get_memory_footprint()}


def load(name: str = "bnb-test", **settings) -> backends.Loaded:
    recipe = Recipe(name, "bitsandbytes", _frozen(settings), builtin=False)
    return backends.load(backends.LoadRequest(TINY_DIR, recipe, "cpu"))


def linear4bit_layers(model):
    import bitsandbytes as bnb

    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def logits(model, ids, repack: bool):
    """The model's logits; ``repack=False``: bitsandbytes' standard 4-bit kernel in the compute dtype (float32),
    where on an AVX512-BF16 CPU it would repack the weights for its bf16 kernel (the natural path elsewhere)."""
    layers = linear4bit_layers(model)
    saved = [getattr(m, "support_avx512bf16_for_cpu", False) for m in layers]
    try:
        if not repack:
            for m in layers:
                m.support_avx512bf16_for_cpu = False
        with torch.inference_mode():
            return model(ids).logits.float()
    finally:
        for m, flag in zip(layers, saved):
            m.support_avx512bf16_for_cpu = flag


def repacked(model) -> int:
    return sum(bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False)) for m in linear4bit_layers(model))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_dequantize_recipe_keeps_logits_and_restores_footprint(reference, quant_type):
    ids = reference["ids"]
    quantized = load(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_compute_dtype="float32")
    assert quantized.model.get_memory_footprint() < 0.5 * reference["footprint"]
    expected = logits(quantized.model, ids, repack=False)

    loaded = load(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_compute_dtype="float32", dequantize=True)
    assert loaded.notes == {"dequantized": True}
    assert loaded.kernel == "Linear (dequantized from Linear4bit)"
    assert not linear4bit_layers(loaded.model)
    with torch.inference_mode():
        got = loaded.model(ids).logits.float()
    # The same weights (code x float32 scale) times the same float32 inputs: measured max |diff| 0.0; the
    # tolerance leaves room for a kernel that sums in another order.
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
    assert loaded.model.get_memory_footprint() == reference["footprint"]
    # bitsandbytes' AVX512-BF16 CPU kernel (where this CPU has it) rounds inputs, scales and outputs to bf16:
    # measured 0.044 (nf4) / 0.050 (fp4) at logits scale ~17; wrong weights move them by ~20.
    torch.testing.assert_close(got, logits(quantized.model, ids, repack=True), atol=0.15, rtol=0)


@pytest.mark.parametrize("double_quant", [False, True])
def test_cpu_repacking_is_undone_exactly(double_quant):
    """The inverse of bitsandbytes' CPU repacking, checked on any CPU (the packing itself is plain torch): the
    same 4-bit codes in the standard layout, the scales the packed kernel uses (bf16; double quant expanded)."""
    import bitsandbytes.functional as F
    from bitsandbytes.nn import Params4bit

    weight = torch.randn(96, 128, generator=torch.Generator().manual_seed(1))
    codes, state = F.quantize_4bit(weight, blocksize=64, compress_statistics=double_quant, quant_type="nf4")
    expected_codes = codes.clone()
    absmax = (F.dequantize_blockwise(state.absmax, state.state2) + state.offset) if double_quant else state.absmax
    expected = F.dequantize_4bit(codes, state)
    param = Params4bit(codes, requires_grad=False, quant_state=state, quant_type="nf4", blocksize=64,
                       bnb_quantized=True)
    param.data, param.quant_state = F._convert_weight_packed_for_cpu(codes, state)
    assert param.quant_state.packing_format_for_cpu and param.data.shape == (96, 64)

    assert bnb_backend._unpack_cpu_4bit(param) is True
    assert torch.equal(param.data, expected_codes)
    qs = param.quant_state
    assert not qs.packing_format_for_cpu and not qs.nested and qs.dtype == torch.float32
    assert torch.equal(qs.absmax, absmax.float().to(torch.bfloat16).float())
    got = F.dequantize_4bit(param.data, qs)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=2**-8, atol=0)  # only the scales' bf16 rounding
    assert bnb_backend._unpack_cpu_4bit(param) is False  # standard layout: left as it is


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_dequantize_after_a_forward_gives_the_weights_the_kernel_used(reference, quant_type):
    """The failing case of transformers' dequantize(): a forward first (bitsandbytes repacks on AVX512-BF16)."""
    ids = reference["ids"]
    loaded = load(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_compute_dtype="float32")
    standard = logits(loaded.model, ids, repack=False)
    natural = logits(loaded.model, ids, repack=True)  # repacks every layer where the CPU has AVX512-BF16
    was_repacked = repacked(loaded.model)
    model = bnb_backend.dequantize_checked(loaded.model, "bnb-test")
    assert not linear4bit_layers(model)
    with torch.inference_mode():
        got = model(ids).logits.float()
    if was_repacked:  # the packed kernel's bf16 scales: measured 0.029 from the float32 ones, 0.039-0.048 from its own
        torch.testing.assert_close(got, natural, atol=0.15, rtol=0)
        torch.testing.assert_close(got, standard, atol=0.1, rtol=0)
    else:
        torch.testing.assert_close(got, standard, atol=1e-4, rtol=1e-5)


def test_dequantize_that_does_not_reproduce_the_layer_is_an_error(monkeypatch):
    import bitsandbytes
    import bitsandbytes.functional as F
    import transformers

    real = F.dequantize_4bit
    monkeypatch.setattr(F, "dequantize_4bit", lambda *a, **k: real(*a, **k) * 1.005)  # weights 0.5% off
    with pytest.raises(bnb_backend.DequantizeMismatch) as info:
        load("my-nf4-dq", load_in_4bit=True, bnb_4bit_quant_type="nf4", dequantize=True)
    message = str(info.value)
    assert "recipe my-nf4-dq" in message and "dequantize = true" in message
    assert f"bitsandbytes {bitsandbytes.__version__}" in message
    assert f"transformers {transformers.__version__}" in message


def test_int8_dequantize_passes_its_check_and_restores_footprint(reference):
    loaded = load(load_in_8bit=True, dequantize=True)
    assert loaded.notes == {"dequantized": True}
    assert loaded.model.get_memory_footprint() == reference["footprint"]
