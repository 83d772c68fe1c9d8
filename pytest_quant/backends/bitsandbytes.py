"""bitsandbytes 4-bit (nf4/fp4, optional double quant) and LLM.int8, on CUDA or CPU."""

from __future__ import annotations

from typing import Any

from . import Loaded, LoadRequest
from .common import default_dtype, load_pretrained, load_tokenizer, quantized_linear_classes

BOOLEAN_FIELDS = ("load_in_4bit", "load_in_8bit", "bnb_4bit_use_double_quant", "llm_int8_has_fp16_weight",
                  "llm_int8_enable_fp32_cpu_offload", "dequantize")
# The plugin's own field: load quantized, then model.dequantize() (transformers): the weights go back to the
# compute dtype carrying the quantization's rounding, as the seed transformers-torch-quantize-save.md does.
# dequantize_checked() first undoes bitsandbytes' CPU repacking of 4-bit weights and afterwards checks one
# layer's output against the quantized layer's (DequantizeMismatch where they differ).
PLUGIN_FIELDS = frozenset({"dequantize"})
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("float32", "float16", "bfloat16")


def validate(settings: dict[str, Any]) -> None:
    """Check a recipe's fields and build transformers' BitsAndBytesConfig from them, before any model loads."""
    for name in BOOLEAN_FIELDS:
        if name in settings and not isinstance(settings[name], bool):
            raise ValueError(f"field {name!r} is {settings[name]!r}; accepted: true or false")
    four, eight = bool(settings.get("load_in_4bit")), bool(settings.get("load_in_8bit"))
    if four == eight:
        raise ValueError("set exactly one of load_in_4bit = true or load_in_8bit = true"
                         + (" (both are set)" if four else ""))
    kind = settings.get("bnb_4bit_quant_type")
    if kind is not None and kind not in QUANT_TYPES:
        raise ValueError(f"field 'bnb_4bit_quant_type' is {kind!r}; accepted: {', '.join(QUANT_TYPES)}")
    dtype = settings.get("bnb_4bit_compute_dtype")
    if dtype is not None and dtype not in COMPUTE_DTYPES:
        raise ValueError(f"field 'bnb_4bit_compute_dtype' is {dtype!r}; accepted: {', '.join(COMPUTE_DTYPES)}")
    threshold = settings.get("llm_int8_threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold <= 0):
        raise ValueError(f"field 'llm_int8_threshold' is {threshold!r}; accepted: a number > 0")
    from transformers import BitsAndBytesConfig

    try:
        BitsAndBytesConfig(**{k: v for k, v in settings.items() if k not in PLUGIN_FIELDS})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"transformers' BitsAndBytesConfig refuses these fields: {exc}") from None


def load(request: LoadRequest) -> Loaded:
    from transformers import BitsAndBytesConfig

    from .skip_modules import skip_problem

    dtype = default_dtype(request.model_path, request.device)
    options = request.recipe.options
    dequantize = bool(options.pop("dequantize", False))
    if options.get("load_in_4bit"):
        options.setdefault("bnb_4bit_compute_dtype", dtype)
    config = BitsAndBytesConfig(**options)
    model = load_pretrained(request.model_path, request.trust_remote_code, quantization_config=config, dtype=dtype,
                            device_map=request.placement)
    problem = skip_problem(model, options.get("llm_int8_skip_modules"), "llm_int8_skip_modules",
                           getattr(request.recipe, "name", "?"))
    if problem:
        del model  # not kept alive by the error's frames
        raise ValueError(problem)
    kernel = quantized_linear_classes(model)
    if dequantize:
        model = dequantize_checked(model, getattr(request.recipe, "name", "?"))
        kernel = f"Linear (dequantized from {kernel})"
    model.eval()
    return Loaded(model, load_tokenizer(request.model_path, request.trust_remote_code), str(dtype).removeprefix("torch."),
                  kernel=kernel, notes={"dequantized": True} if dequantize else {})


class DequantizeMismatch(RuntimeError):
    """The dequantized weights do not reproduce the quantized layer's forward (a library bug or layout change)."""


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for dist in ("bitsandbytes", "transformers", "torch"):
        try:
            found.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            found.append(f"{dist} (not installed)")
    return ", ".join(found)


def _unpack_cpu_4bit(weight) -> bool:
    """Undo bitsandbytes' CPU repacking of one Params4bit, in place; True where it was repacked.

    On CPUs with AVX512-BF16, bitsandbytes (0.49+) rewrites a Linear4bit's weight at its first eval forward
    (``_convert_weight_packed_for_cpu``): the nibbles reordered into [N, K/2] tiles of 32 rows, absmax
    transposed to [K/blocksize, N] in bfloat16 (double-quantized scales expanded), ``quant_state.dtype`` set to
    bfloat16 and ``packing_format_for_cpu`` set. ``dequantize_4bit`` (so transformers' ``dequantize()``) reads
    that state as the standard layout and returns scrambled weights; bitsandbytes' own inverse leaves absmax
    transposed when the scales were not double-quantized and re-quantizes them when they were. This inverse
    gives back the standard layout with the very scales the packed kernel multiplies by (bf16, held in fp32).
    """
    import torch

    state = getattr(weight, "quant_state", None)
    if state is None or not getattr(state, "packing_format_for_cpu", False):
        return False
    packed = weight.data.view(torch.uint8)
    n, k_half = packed.shape
    k, block_n = 2 * k_half, 32
    nibbles = packed.reshape(-1, 32)  # the forward's packing: a row of 32 bytes holds 32 low, then 32 high nibbles
    tiles = torch.cat([nibbles & 0xF, nibbles >> 4], dim=-1).reshape(n // block_n, k_half, block_n, 2)
    codes = tiles.transpose(-3, -2).reshape(n, k).reshape(-1)  # [N, K], one 4-bit code per element
    standard = (codes[::2] << 4) | codes[1::2]  # two codes a byte, the first in the high nibble
    standard = standard.reshape(getattr(state, "original_qshape", (n * k_half, 1)))
    storage = getattr(state, "original_storage_type", None)
    weight.data = standard.view(storage) if storage is not None else standard
    state.absmax = state.absmax.T.reshape(-1).float().contiguous()
    state.nested = False  # the scales were expanded at packing; they stay expanded
    state.dtype = getattr(state, "original_dtype", torch.float32)
    state.packing_format_for_cpu = False
    return True


def _probe(layer, generator, default):
    """A probe input for one quantized Linear, and the layer's output on it, taken without letting bitsandbytes
    repack the weight (``support_avx512bf16_for_cpu`` off for the call): the standard kernel in the compute dtype.
    Returns (input, output, dtype the kernel rounded to)."""
    import torch

    weight = layer.weight
    dtype = getattr(layer, "compute_dtype", None) or getattr(getattr(weight, "quant_state", None), "dtype", None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        dtype = default  # LLM.int8: the model's dtype
    x = torch.randn(8, layer.in_features, generator=generator).to(weight.device, dtype)
    kernel = dtype
    if getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False):
        kernel = torch.bfloat16  # already repacked: its forward rounds inputs, scales and outputs to bf16
    saved = getattr(layer, "support_avx512bf16_for_cpu", None)
    try:
        if saved is not None:
            layer.support_avx512bf16_for_cpu = False
        with torch.no_grad():
            y = layer(x).float()
    finally:
        if saved is not None:
            layer.support_avx512bf16_for_cpu = saved
    return x, y, kernel


def _tolerance(x, y, new_weight, kernel, int8: bool) -> float:
    """How far the dequantized layer's output may be from the quantized one's: rounding in the kernel's dtype
    (bf16/fp16 inputs, scales and outputs; fp32 summation order), or int8 activation quantization (LLM.int8),
    on the scale of the products' root sum of squares. Wrong weights move outputs by about that scale itself."""
    import torch

    x32, w32 = x.float(), new_weight.detach().float()
    spread = ((x32 * x32) @ (w32 * w32).T).sqrt().max().item()  # the scale random rounding errors add up to
    k = x.shape[-1]
    fp32 = 16 * (k ** 0.5) * torch.finfo(torch.float32).eps
    if int8:  # per-row int8 activations: each rounded by up to absmax/254
        return float(8 * (x32.abs().amax(-1) / 254).max().item() * w32.norm(dim=1).max().item() + fp32 * spread)
    return float((8 * torch.finfo(kernel).eps + fp32) * spread + 1e-6 * y.abs().max().item())


def dequantize_checked(model, recipe: str):
    """``model.dequantize()`` giving back the weights the quantized forward multiplies by, checked.

    Before: repacked CPU 4-bit weights are put back in the standard layout, and one quantized layer's output
    on a probe input is taken. After: the dequantized layer's output on it must agree within rounding, else
    DequantizeMismatch names the recipe, the layer and the versions (never a silently wrong figure).
    """
    import bitsandbytes as bnb
    import torch

    quantized = [(name, m) for name, m in model.named_modules()
                 if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]
    repacked = sum(_unpack_cpu_4bit(m.weight) for _, m in quantized if isinstance(m, bnb.nn.Linear4bit))
    probe = None
    if quantized:
        name, layer = quantized[0]
        probe = (name, isinstance(layer, bnb.nn.Linear8bitLt), *_probe(layer, torch.Generator().manual_seed(0),
                                                                            getattr(model, "dtype", torch.float32)))
    model = model.dequantize() or model
    if probe is None:
        return model
    name, int8, x, expected, kernel = probe
    new = model.get_submodule(name)
    with torch.no_grad():
        got = new(x.to(new.weight.dtype)).float()
    diff = (got - expected).abs().max().item()
    tolerance = _tolerance(x, expected, new.weight, kernel, int8)
    if not diff <= tolerance:
        raise DequantizeMismatch(
            f"recipe {recipe}: bitsandbytes dequantize gave weights that do not reproduce the quantized layer "
            f"{name!r}: on a probe input its output moved by {diff:.4g} (allowed {tolerance:.3g}, output scale "
            f"{expected.abs().max().item():.3g}; {repacked} layers had been repacked for CPU). "
            f"With {_versions()} the dequantized model is not the quantized one, so no figure is measured from "
            "it; drop dequantize = true from the recipe, or use other versions of these libraries.")
    return model
