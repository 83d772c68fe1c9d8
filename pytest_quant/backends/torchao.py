"""torchao through transformers' ``TorchAoConfig``: int8/int4 weight-only, int8 dynamic, float8.

Which run where (torchao 0.18, torch 2.14): on CPU int8 weight-only, int8 dynamic activation + int8
weight, float8 weight-only and intx weight-only (int1-int8 in groups, stored unpacked in int8); int4
weight-only (``Int4WeightOnlyConfig``) is CUDA only: its default "plain" format needs ``mslk`` (a CUDA
library) and "tile_packed_to_4d" is tinygemm, bfloat16 on CUDA. float8 dynamic activation needs CUDA
compute capability 8.9+ (Ada, Hopper). An unsupported pair fails before loading, naming the alternative.

torchao keeps ``nn.Linear`` and swaps its weight for a tensor subclass that reports the float dtype, so
``get_memory_footprint`` is replaced by one that counts the plain tensors inside each subclass.
"""

from __future__ import annotations

import time
from typing import Any

from . import Loaded, default_dtype, load_tokenizer
from .base import attach_footprint, kernel_name, refuse_unknown_fields

REQUIRES: tuple[str, ...] = ("torchao",)
INSTALL_HINT = "pip install 'pytest-quant[torchao]'"
DEVICES = ("cpu", "cuda")

# quant_type -> device kinds it runs on
QUANT_TYPES: dict[str, frozenset[str]] = {
    "int8_weight_only": frozenset({"cpu", "cuda"}),
    "int4_weight_only": frozenset({"cuda"}),
    "int8_dynamic_activation_int8_weight": frozenset({"cpu", "cuda"}),
    "float8_weight_only": frozenset({"cpu", "cuda"}),
    "float8_dynamic_activation_float8_weight": frozenset({"cuda"}),  # compute capability >= 8.9
    "intx_weight_only": frozenset({"cpu", "cuda"}),
    # FP4 (torchao.prototype.mx_formats): bfloat16 weights in; NVFP4 weight-only dequantizes at each matmul, MXFP4
    # runs the emulated kernel (fp4 matmuls need Blackwell, compute capability 10.0): the quality is the format's,
    # the speed and memory of the emulation are not those of FP4 tensor cores
    "nvfp4_weight_only": frozenset({"cpu", "cuda"}),
    "mxfp4_dynamic": frozenset({"cpu", "cuda"}),
}
FP4_TYPES = ("nvfp4_weight_only", "mxfp4_dynamic")
BFLOAT16_ONLY = {  # quant types whose torchao kernels refuse other weight dtypes, and why
    "nvfp4_weight_only": "torchao's NVFP4 tensor", "mxfp4_dynamic": "torchao's MX tensor",
    # "PerRow quantization only works for bfloat16 precision input weight" (torchao 0.18, on a float16 model)
    "float8_dynamic_activation_float8_weight": "per-row float8 scaling",
}
INT4_PACKING_FORMATS = ("tile_packed_to_4d", "plain", "preshuffled", "plain_int32")
DTYPES = ("float32", "bfloat16", "float16")
FIELDS = frozenset(
    {
        "quant_type",
        "group_size",
        "bits",
        "int4_packing_format",
        "dtype",
        "modules_to_not_convert",
        "include_input_output_embeddings",
        "untie_embedding_weights",
    }
)


def validate(settings: dict[str, Any]) -> None:
    refuse_unknown_fields("torchao", settings, FIELDS)
    quant_type = settings.get("quant_type")
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"torchao: quant_type = {quant_type!r} is not one of {sorted(QUANT_TYPES)}")
    group_size = settings.get("group_size")
    if group_size is not None and (not isinstance(group_size, int) or group_size < 1):
        raise ValueError(f"torchao: group_size = {group_size!r} must be a positive integer (e.g. 32, 64, 128)")
    if group_size is not None and quant_type not in ("int4_weight_only", "intx_weight_only", "int8_weight_only"):
        raise ValueError(f"torchao: group_size is not accepted with quant_type = {quant_type!r}")
    bits = settings.get("bits")
    if bits is not None and (quant_type != "intx_weight_only" or bits not in range(1, 9)):
        raise ValueError(f"torchao: bits = {bits!r} is accepted only with quant_type = 'intx_weight_only', as 1..8")
    packing = settings.get("int4_packing_format")
    if packing is not None and (quant_type != "int4_weight_only" or packing not in INT4_PACKING_FORMATS):
        raise ValueError(
            f"torchao: int4_packing_format = {packing!r} is accepted only with quant_type = 'int4_weight_only', "
            f"as one of {list(INT4_PACKING_FORMATS)}"
        )
    dtype = settings.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"torchao: dtype = {dtype!r} is not one of {list(DTYPES)}")
    if quant_type in BFLOAT16_ONLY and dtype != "bfloat16":
        raise ValueError(f"torchao: quant_type = {quant_type!r} quantizes bfloat16 weights only ({BFLOAT16_ONLY[quant_type]}): "
                         f"set dtype = 'bfloat16' (got {dtype!r})")


def check_device(quant_type: str, device: str) -> None:
    """Raise ValueError when ``quant_type`` cannot run on ``device`` with this torchao (before loading)."""
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    if kind not in QUANT_TYPES[quant_type]:
        alternative = " (on CPU use quant_type = 'intx_weight_only' with bits = 4)" if quant_type == "int4_weight_only" else ""
        raise ValueError(f"torchao: quant_type = {quant_type!r} needs CUDA; device is {device!r}{alternative}")
    if quant_type == "float8_dynamic_activation_float8_weight":
        import torch

        capability = torch.cuda.get_device_capability(torch.device(device))
        if capability < (8, 9):
            raise ValueError(
                f"torchao: float8 dynamic activation needs CUDA compute capability 8.9+ (Ada, Hopper); "
                f"{device} has {capability[0]}.{capability[1]}"
            )


def quant_config(settings: dict[str, Any]):
    """The torchao ``AOBaseConfig`` a recipe names."""
    import torch
    import torchao.quantization as tq

    quant_type = settings["quant_type"]
    group_size = settings.get("group_size")
    if quant_type == "int8_weight_only":
        return tq.Int8WeightOnlyConfig(group_size=group_size)
    if quant_type == "int4_weight_only":
        packing = settings.get("int4_packing_format", "tile_packed_to_4d")
        return tq.Int4WeightOnlyConfig(group_size=group_size or 128, int4_packing_format=packing)
    if quant_type == "int8_dynamic_activation_int8_weight":
        return tq.Int8DynamicActivationInt8WeightConfig()
    if quant_type == "float8_weight_only":
        return tq.Float8WeightOnlyConfig()
    if quant_type == "float8_dynamic_activation_float8_weight":
        from torchao.quantization.granularity import PerRow

        return tq.Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    if quant_type in FP4_TYPES:
        return _fp4_config(quant_type)
    from torchao.quantization.granularity import PerGroup

    bits = int(settings.get("bits", 4))
    return tq.IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{bits}"), granularity=PerGroup(group_size or 128))


def _fp4_config(quant_type: str):
    import torch
    from torchao.prototype.mx_formats import MXDynamicActivationMXWeightConfig, NVFP4WeightOnlyConfig
    from torchao.quantization.quantize_.common.kernel_preference import KernelPreference

    if quant_type == "nvfp4_weight_only":
        return NVFP4WeightOnlyConfig()
    return MXDynamicActivationMXWeightConfig(activation_dtype=torch.float4_e2m1fn_x2,
                                             weight_dtype=torch.float4_e2m1fn_x2,
                                             kernel_preference=KernelPreference.EMULATED)


def load(request) -> Loaded:
    import torch
    from transformers import TorchAoConfig

    from .common import load_pretrained
    from .skip_modules import skip_problem

    settings = dict(request.recipe.options)
    validate(settings)
    check_device(settings["quant_type"], request.device)
    if settings.get("dtype"):
        dtype = getattr(torch, settings["dtype"])
    elif settings["quant_type"] == "int4_weight_only" and settings.get("int4_packing_format", "tile_packed_to_4d") == "tile_packed_to_4d":
        dtype = torch.bfloat16  # tinygemm takes bfloat16 only
    else:
        dtype = default_dtype(request.model_path, request.device)
    passthrough = {
        k: settings[k]
        for k in ("modules_to_not_convert", "include_input_output_embeddings", "untie_embedding_weights")
        if k in settings
    }
    config = TorchAoConfig(quant_config(settings), **passthrough)
    start = time.perf_counter()
    model = load_pretrained(request.model_path, request.trust_remote_code, quantization_config=config, dtype=dtype,
                            device_map=request.placement)  # an image-text-to-text model's Auto class too
    problem = skip_problem(model, settings.get("modules_to_not_convert"), "modules_to_not_convert",
                           getattr(request.recipe, "name", "?"))
    if problem:
        del model  # not kept alive by the error's frames
        raise ValueError(problem)
    model.eval()
    seconds = time.perf_counter() - start  # quantization happens inside the load
    attach_footprint(model)
    return Loaded(
        model,
        load_tokenizer(request.model_path, request.trust_remote_code),
        str(dtype).removeprefix("torch."),
        kernel=kernel_name(model),
        quantize_seconds=seconds,
        notes={"quant_type": settings["quant_type"], "footprint_bytes": model.get_memory_footprint()},
    )
