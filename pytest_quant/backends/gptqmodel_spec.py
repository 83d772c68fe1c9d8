"""GPTQ and AWQ recipes read for GPTQModel: the quantization settings, the kernel, the calibration size.

Light: nothing heavy is imported until a kernel name is checked against GPTQModel's list.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import calibration as calib
from ..hardware import device_kind

DEFAULT_BATCH_SIZE = 8

# Recipe fields and what becomes of them. Plugin fields first, then the transformers config fields that
# map onto GPTQModel's QuantizeConfig; any other field is refused with a message naming it.
PLUGIN_ONLY = frozenset({"kernel", "backend", "calibration", "calibration_samples", "calibration_seq_len", "batch_size"})
PASSED_THROUGH = frozenset({"method", "bits", "group_size", "desc_act", "sym", "true_sequential", "damp_percent", "act_group_aware"})
LOAD_ONLY = frozenset({"max_input_length"})  # a loading attribute of GPTQConfig
# GPTQModel's AWQ backend names -> transformers' AwqBackend values (which GPTQModel maps back).
AWQ_CONFIG_NAMES = {
    "awq_torch": "torch_awq",
    "awq_torch_fused": "torch_fused_awq",
    "awq_gemm": "gemm",
    "awq_gemm_triton": "gemm_triton",
    "awq_gemv": "gemv",
    "awq_gemv_fast": "gemv_fast",
    "awq_marlin": "marlin",
    "awq_machete": "machete",
    "awq_exllama_v2": "exllama_v2",
}


@dataclass(frozen=True)
class QuantSpec:
    """A gptqmodel recipe read into what GPTQModel and the loader need."""

    method: str  # "gptq" or "awq"
    quantize: dict[str, Any]  # GPTQModel QuantizeConfig keyword arguments
    kernel: str  # a GPTQModel backend name, e.g. "gptq_torch"
    samples: int
    seq_len: int
    batch_size: int
    calibration: Path | None  # the recipe's own calibration file, if it names one
    load_options: dict[str, Any] = field(default_factory=dict)


def prepare_environment() -> None:
    """Environment GPTQModel reads when imported or when it first builds its worker pool.

    GPTQModel sizes its CPU pool at half the cores but needs two workers for its model loader, so on a
    2-core machine it refuses to start; we ask for at least two. On import it also sets
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and its own ``PYTORCH_ALLOC_CONF`` when they are unset, which would
    renumber GPUs and change the allocator (and so the VRAM measured) for the rest of the session; setting
    them first to what torch does anyway keeps the process as it was.
    """
    cores = os.cpu_count() or 1
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, min(12, (cores + 1) // 2))))
    os.environ.setdefault("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    os.environ.setdefault("PYTORCH_ALLOC_CONF", os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or "expandable_segments:False")


def import_gptqmodel():
    """GPTQModel, imported with the environment it needs (the one place that imports it)."""
    prepare_environment()
    import gptqmodel

    from .base import drop_import_tracebacks

    drop_import_tracebacks("gptqmodel")
    return gptqmodel


def available_kernels(method: str) -> list[str]:
    """GPTQModel's backend names for ``method`` (e.g. gptq_torch, gptq_triton, gptq_marlin), and "auto"."""
    import_gptqmodel()
    from gptqmodel.utils.backend import BACKEND

    return ["auto"] + sorted(b.value for b in BACKEND if b.value.startswith(f"{method}_"))


def default_kernel(method: str, device: str, bits: int) -> str:
    """A kernel that loads offline without a long JIT build: torch on CPU, Triton on CUDA when installed."""
    if device_kind(device) == "cuda" and importlib.util.find_spec("triton") is not None:
        if method == "gptq":
            return "gptq_triton"
        if method == "awq" and bits == 4:
            return "awq_gemm_triton"
    return f"{method}_torch"


def resolve_kernel(method: str, requested: str | None, device: str, bits: int, where: str) -> str:
    """The GPTQModel backend name for a recipe's ``kernel`` (``torch`` and ``gptq_torch`` both work)."""
    if requested is None:
        return default_kernel(method, device, bits)
    name = str(requested).strip().lower()
    known = available_kernels(method)
    for candidate in (name, f"{method}_{name}"):
        if candidate in known:
            return candidate
    raise ValueError(f"{where}: kernel {requested!r} is not a {method} kernel of GPTQModel; known kernels: {', '.join(known)}")


def spec_from_recipe(recipe, device: str, resolve: bool = True) -> QuantSpec:
    """Validate a gptqmodel recipe and split it into quantization, calibration and loading settings."""
    return spec_from_options(recipe.options, device, f"recipe {recipe.name}" if recipe.name else "recipe", resolve)


def spec_from_options(options: dict[str, Any], device: str, where: str = "recipe", resolve: bool = True) -> QuantSpec:
    """The same from a recipe's fields; ``where`` names them in errors. ``resolve=False``: the kernel is not
    checked against GPTQModel (at start-up, before anything heavy is imported)."""
    method = str(options.get("method", "gptq")).lower()
    if method not in ("gptq", "awq"):
        raise ValueError(f"{where}: method {method!r} is not one of ['awq', 'gptq']")
    kernel, backend = options.get("kernel"), options.get("backend")
    if kernel is not None and backend is not None and str(kernel).lower() != str(backend).lower():
        raise ValueError(f"{where}: kernel {kernel!r} and backend {backend!r} disagree; set only kernel")
    quantize: dict[str, Any] = {}
    load_options: dict[str, Any] = {}
    for name, value in options.items():
        if name in PASSED_THROUGH:
            quantize[name] = value
        elif name == "zero_point":
            quantize["sym"] = not value
        elif name in ("version", "format"):
            quantize["format"] = str(value).lower()
        elif name in LOAD_ONLY:
            load_options[name] = value
        elif name not in PLUGIN_ONLY:
            raise ValueError(
                f"{where}: field {name!r} is not supported when quantizing with GPTQModel "
                "(calibration data comes from the 'calibration' field, its size from 'calibration_samples' and "
                "'calibration_seq_len')"
            )
    quantize["method"] = method
    quantize.setdefault("bits", 4)
    quantize.setdefault("group_size", 128)
    if method == "awq":
        quantize.setdefault("format", "gemm")
        quantize.setdefault("sym", False)  # AWQ's zero point, as AwqConfig's default zero_point=True
    # On CPU, GPTQModel's default packer is a C++ extension compiled on first use (about a minute);
    # the pure-torch packer writes the same bytes.
    quantize["pack_impl"] = "original" if device_kind(device) == "cpu" else "auto"
    bits = quantize["bits"]
    calibration = options.get("calibration")
    return QuantSpec(
        method=method,
        quantize=quantize,
        kernel=resolve_kernel(method, kernel if kernel is not None else backend, device, bits, where) if resolve else "",
        samples=calib.check_count("calibration_samples", options.get("calibration_samples", calib.DEFAULT_SAMPLES)),
        seq_len=calib.check_count("calibration_seq_len", options.get("calibration_seq_len", calib.DEFAULT_SEQ_LEN)),
        batch_size=calib.check_count("batch_size", options.get("batch_size", DEFAULT_BATCH_SIZE)),
        calibration=Path(calibration).expanduser() if calibration else None,
        load_options=load_options,
    )



def validate(settings: dict[str, Any]) -> None:
    """A gptqmodel recipe's fields, checked at start-up (the kernel against GPTQModel's list when installed)."""
    method = str(settings.get("method", "gptq")).lower()
    if method not in ("gptq", "awq"):
        raise ValueError(f"field 'method' is {settings.get('method')!r}; accepted: awq, gptq")
    bits = settings.get("bits", 4)
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in (2, 3, 4, 8):
        raise ValueError(f"field 'bits' is {bits!r}; accepted: 2, 3, 4 or 8")
    group = settings.get("group_size", 128)
    if isinstance(group, bool) or not isinstance(group, int) or not (group == -1 or group > 0):
        raise ValueError(f"field 'group_size' is {group!r}; accepted: a whole number > 0, or -1")
    calibration = settings.get("calibration")
    if calibration is not None and not Path(str(calibration)).expanduser().is_file():
        where = "" if Path(str(calibration)).expanduser().is_absolute() else f" in {Path.cwd()}"
        raise ValueError(f"field 'calibration' is {calibration!r}: no such file{where} (a relative path is read from "
                         "the folder pytest runs in); accepted: a text, JSON or JSONL file")
    kernel = settings.get("kernel")
    if kernel is not None and importlib.util.find_spec("gptqmodel") is not None:
        known = available_kernels(method)
        if not {str(kernel).strip().lower(), f"{method}_{str(kernel).strip().lower()}"} & set(known):
            raise ValueError(f"field 'kernel' is {kernel!r}; accepted: {', '.join(known)} (GPTQModel's {method} kernels)")
    spec_from_options(dict(settings), "cpu", resolve=False)
