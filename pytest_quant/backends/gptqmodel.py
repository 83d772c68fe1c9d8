"""GPTQ and AWQ through GPTQModel: quantized on the fly into an on-disk cache, or pre-quantized checkpoints.

A recipe is quantized once with GPTQModel, saved as a checkpoint into the cache (``pytest_quant.qcache``)
and always loaded from that folder by transformers, so a fresh quantization and a cache hit run the very
same code. The kernel is chosen explicitly and never left to GPTQModel's automatic choice, which on Hopper
picks Machete (its JIT build downloads CUTLASS, so it fails offline) and on CPU JIT-compiles AVX512
extensions for minutes: the recipe's ``kernel`` wins, else the torch kernel on CPU and the Triton kernel on
CUDA (torch where Triton is missing). ``Loaded.kernel`` names the classes of the layers that were loaded.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import calibration as calib
from .. import qcache
from . import Loaded, LoadRequest, default_dtype, device_kind, load_tokenizer, quantized_linear_classes

REQUIRES: tuple[str, ...] = ("gptqmodel", "optimum")
INSTALL_HINT = "pip install 'pytest-quant[gptq]'"
DEVICES = ("cpu", "cuda")

PREQUANTIZED = "prequantized"
CALLS_BEFORE_LOAD = True  # request.before_load() runs after quantization, right before the measured load
# What loading a pre-quantized checkpoint of each method needs installed (import names).
PREQUANTIZED_REQUIRES: dict[str, tuple[str, ...]] = {
    "gptq": ("gptqmodel", "optimum"),
    "awq": ("gptqmodel",),
    "bitsandbytes": ("bitsandbytes",),
}
CACHE_SUBDIR = "gptqmodel"
DEFAULT_BATCH_SIZE = 8
KEY_LIBRARIES = ("gptqmodel", "transformers", "torch")

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


@dataclass(frozen=True)
class Quantized:
    """A model GPTQModel has just quantized, and how long that took (loading it, quantizing, saving).

    The model in memory is packed the way GPTQModel saves it (GPTQ zero points in the v1 layout), not
    ready to run: load the saved folder to use it.
    """

    qmodel: Any  # gptqmodel BaseQModel; ``.model`` is the transformers module
    seconds: float
    saved_to: Path | None


@dataclass(frozen=True)
class RoundTrip:
    """Logits of one quantized model read two ways (before and after a save, or by two loaders)."""

    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    top1_agreement: float
    tokens: int
    atol: float
    kernel_before: str
    kernel_after: str

    @property
    def ok(self) -> bool:
        return self.max_abs_logit_diff <= self.atol


# -- environment -------------------------------------------------------------------------------------

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


def _gptqmodel():
    prepare_environment()
    import gptqmodel

    return gptqmodel


# -- reading recipes and checkpoints --------------------------------------------------------------------

def quantization_method(model_path: Path) -> str | None:
    """The quantization method a model folder's config.json declares ("gptq", "awq", "bitsandbytes", ...).

    None for an unquantized model. Reads the JSON only (no torch); a missing or unreadable config.json
    is an error naming the file.
    """
    config_file = Path(model_path) / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{config_file}: cannot read the model config ({exc})") from exc
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(qc, dict):
        return None
    if qc.get("load_in_4bit") or qc.get("load_in_8bit") or str(qc.get("quant_method", "")).lower() == "bitsandbytes":
        return "bitsandbytes"
    method = qc.get("quant_method")
    return str(method).lower() if method else None


def available_kernels(method: str) -> list[str]:
    """GPTQModel's backend names for ``method`` (e.g. gptq_torch, gptq_triton, gptq_marlin), and "auto"."""
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


def spec_from_recipe(recipe, device: str) -> QuantSpec:
    """Validate a gptqmodel recipe and split it into quantization, calibration and loading settings."""
    where = f"recipe {recipe.name}"
    options = recipe.options
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
        kernel=resolve_kernel(method, kernel if kernel is not None else backend, device, bits, where),
        samples=calib.check_count("calibration_samples", options.get("calibration_samples", calib.DEFAULT_SAMPLES)),
        seq_len=calib.check_count("calibration_seq_len", options.get("calibration_seq_len", calib.DEFAULT_SEQ_LEN)),
        batch_size=calib.check_count("batch_size", options.get("batch_size", DEFAULT_BATCH_SIZE)),
        calibration=Path(calibration).expanduser() if calibration else None,
        load_options=load_options,
    )


def calibration_source(spec: QuantSpec, request: LoadRequest) -> Path:
    """The recipe's own calibration file, else the session's, else the embedded text."""
    if spec.calibration is not None:
        return spec.calibration
    if request.calibration_text is not None:
        return Path(request.calibration_text)
    from ..models import embedded_calibration_text

    return embedded_calibration_text()


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in KEY_LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions


def cache_inputs(model_path: Path, spec: QuantSpec, calibration: calib.Calibration, device: str,
                 memo_dir: Path | None = None) -> dict[str, Any]:
    """Everything that shapes the quantized weights: the cache key is a hash of this.

    The kernel is left out (it changes how the checkpoint runs, not what is in it); the device kind is in,
    since GPU and CPU arithmetic give slightly different weights.
    """
    return {
        "model": qcache.model_fingerprint(model_path, memo_dir),
        "quantize": spec.quantize,
        "batch_size": spec.batch_size,
        "calibration": {"sha256": calibration.digest(), "samples": calibration.samples, "seq_len": calibration.seq_len},
        "device": device_kind(device),
        "versions": library_versions(),
    }


# -- quantizing and loading -----------------------------------------------------------------------------

def quantize(model_path: Path, spec: QuantSpec, calibration: calib.Calibration, device: str,
             out_dir: Path | None = None) -> Quantized:
    """Quantize with GPTQModel (and save to ``out_dir`` when given); the model stays in memory.

    The seconds cover loading the unquantized model, quantizing and saving: what a cache hit saves.
    """
    gptqmodel = _gptqmodel()
    config = gptqmodel.QuantizeConfig(**spec.quantize)
    start = time.perf_counter()
    qmodel = gptqmodel.GPTQModel.load(str(model_path), config, device=device)
    qmodel.quantize(calibration.as_dataset(), batch_size=spec.batch_size)
    if out_dir is not None:
        qmodel.save(str(out_dir))
    return Quantized(qmodel, time.perf_counter() - start, Path(out_dir) if out_dir is not None else None)


def load_checkpoint(path: Path, device: str, kernel: str | None = None, dtype=None, **load_options):
    """Load a quantized checkpoint folder with transformers, with an explicit kernel for GPTQ and AWQ."""
    from transformers import AutoModelForCausalLM

    method = quantization_method(path)
    if method is None:
        raise ValueError(f"{path}: config.json has no quantization_config, so it is not a quantized checkpoint")
    config = None
    if method in ("gptq", "awq"):
        prepare_environment()
        from transformers import AwqConfig, GPTQConfig

        saved = json.loads((Path(path) / "config.json").read_text())["quantization_config"]
        bits = int(saved.get("bits", 4))
        kernel = resolve_kernel(method, kernel, device, bits, str(path))
        config = GPTQConfig(bits=bits) if method == "gptq" else AwqConfig(bits=bits)
        # transformers copies these "loading attributes" onto the checkpoint's own config without
        # validating them again, so any GPTQModel backend name gets through; AWQ kernels that AwqConfig
        # knows by another name get that name, so a model saved again still passes AwqConfig's check.
        config.backend = AWQ_CONFIG_NAMES.get(kernel, kernel) if method == "awq" else kernel
        for name, value in load_options.items():
            setattr(config, name, value)
    elif method != "bitsandbytes":
        raise ValueError(f"{path}: quantization method {method!r} is not one of {sorted(PREQUANTIZED_REQUIRES)}")
    dtype = dtype if dtype is not None else default_dtype(Path(path), device)
    with warnings.catch_warnings():
        # "You passed `quantization_config` ... loading attributes will be overwritten": that is the point.
        warnings.filterwarnings("ignore", message="You passed `quantization_config`")
        model = AutoModelForCausalLM.from_pretrained(
            path, device_map=device, dtype=dtype, **({"quantization_config": config} if config is not None else {})
        )
    model.eval()
    return model, method, kernel


def load(request: LoadRequest) -> Loaded:
    if request.recipe.name == PREQUANTIZED:
        return load_prequantized(request)
    prepare_environment()
    spec = spec_from_recipe(request.recipe, request.device)
    tokenizer = load_tokenizer(request.model_path)
    source = calibration_source(spec, request)
    calibration = calib.build(source, tokenizer, spec.samples, spec.seq_len)
    notes: dict[str, Any] = {
        "method": spec.method,
        "kernel_requested": spec.kernel,
        "calibration": str(source),
        "calibration_samples": calibration.samples,
        "calibration_seq_len": calibration.seq_len,
    }
    if calibration.samples < spec.samples:
        notes["calibration_short"] = (
            f"{calibration.tokens_available} tokens give {calibration.samples} of the {spec.samples} samples asked for"
        )
    seconds, cache = 0.0, ""
    if request.cache_dir is None:
        saved = Path(tempfile.mkdtemp(prefix="pytest-quant-gptqmodel-"))
        atexit.register(shutil.rmtree, saved, ignore_errors=True)
        seconds = _quantize_and_free(request.model_path, spec, calibration, request.device, saved)
    else:
        root = Path(request.cache_dir) / CACHE_SUBDIR
        inputs = cache_inputs(request.model_path, spec, calibration, request.device, memo_dir=root)
        key = qcache.cache_key(inputs)
        with qcache.locked(root, key):
            found = qcache.lookup(root, key, inputs)
            if found.entry is not None:
                cache, saved = "hit", found.entry.path
                notes["quantize_seconds_when_cached"] = found.entry.manifest.get("info", {}).get("quantize_seconds")
            else:
                staged = qcache.staging_dir(root, key)
                try:
                    seconds = _quantize_and_free(request.model_path, spec, calibration, request.device, staged)
                    saved = qcache.publish(root, key, staged, inputs, {"quantize_seconds": seconds}).path
                except BaseException:
                    shutil.rmtree(staged, ignore_errors=True)
                    raise
                cache = "rebuilt" if found.problem else "miss"
                if found.problem:
                    notes["cache_problem"] = found.problem
        notes["cache_key"] = key
    notes["checkpoint"] = str(saved)
    # The source model's dtype, as the reference runs in, whatever GPTQModel quantized in.
    dtype = default_dtype(request.model_path, request.device)
    request.before_load()
    model, _, _ = load_checkpoint(saved, request.device, spec.kernel, dtype=dtype, **spec.load_options)
    return Loaded(
        model,
        tokenizer,
        str(model.dtype).removeprefix("torch."),
        kernel=quantized_linear_classes(model),
        quantize_seconds=seconds,
        cache=cache,
        notes=notes,
    )


def _quantize_and_free(model_path: Path, spec: QuantSpec, calibration: calib.Calibration, device: str,
                       out_dir: Path) -> float:
    result = quantize(model_path, spec, calibration, device, out_dir)
    seconds = result.seconds
    del result
    _free_memory(device)
    return seconds


def _free_memory(device: str) -> None:
    import gc

    gc.collect()
    if device_kind(device) == "cuda":
        import torch

        torch.cuda.empty_cache()


def load_prequantized(request: LoadRequest) -> Loaded:
    """A model folder whose config.json already carries a quantization_config (GPTQ, AWQ, bitsandbytes).

    The recipe may name a ``kernel``; nothing is quantized or cached.
    """
    method = quantization_method(request.model_path)
    if method is None:
        raise ValueError(
            f"{request.model_path}: config.json has no quantization_config; recipe {PREQUANTIZED!r} needs a "
            "pre-quantized checkpoint"
        )
    request.before_load()
    model, method, kernel = load_checkpoint(request.model_path, request.device, request.recipe.get("kernel"))
    notes = {"method": method, "checkpoint": str(request.model_path)}
    if kernel:
        notes["kernel_requested"] = kernel
    return Loaded(
        model,
        load_tokenizer(request.model_path),
        str(model.dtype).removeprefix("torch."),
        kernel=quantized_linear_classes(model),
        notes=notes,
    )


# -- checks of the saved checkpoints ----------------------------------------------------------------------

def roundtrip_check(loaded: Loaded, saved_path: Path, device: str, *, atol: float | None = None,
                    input_ids=None, tokens: int = 128) -> RoundTrip:
    """Save ``loaded.model`` with ``save_pretrained`` into ``saved_path``, reload it, compare logits.

    The reload uses the same dtype and kernel, so the same arithmetic should give the same logits; a
    difference beyond ``atol`` means saving or loading changed the weights. The default ``atol`` is 1e-4
    on CPU, where the torch kernels repeat bit for bit, and 0.05 on CUDA, where the Triton kernels do
    not (about two float16 steps of a logit near 10). Without ``input_ids`` the first ``tokens`` tokens
    of the embedded evaluation text are used.
    """
    if atol is None:
        atol = 1e-4 if device_kind(device) == "cpu" else 0.05
    saved_path = Path(saved_path)
    loaded.model.save_pretrained(saved_path)
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(saved_path)
    kernel = loaded.notes.get("kernel_requested")
    reloaded, _, _ = load_checkpoint(saved_path, device, kernel, dtype=loaded.model.dtype)
    try:
        return _compare(loaded.model, reloaded, saved_path, atol, input_ids, tokens)
    finally:
        del reloaded
        _free_memory(device)


def loader_agreement(checkpoint: Path, device: str, *, kernel: str | None = None, dtype=None, atol: float = 0.25,
                     input_ids=None, tokens: int = 128) -> RoundTrip:
    """Logits of a GPTQ/AWQ checkpoint as GPTQModel (its writer) reads it vs as transformers reads it.

    The plugin measures the transformers-loaded model; this checks that it is the model GPTQModel made.
    Both load with the same kernel and dtype (default: bfloat16 on CPU, where GPTQModel refuses float32
    for the torch kernel, float16 on CUDA). GPTQModel casts GPTQ's float16 scales to that dtype while
    transformers keeps them, so ``atol`` allows for bfloat16 rounding.
    """
    import torch

    checkpoint = Path(checkpoint)
    method = quantization_method(checkpoint)
    if method not in ("gptq", "awq"):
        raise ValueError(f"{checkpoint}: not a GPTQ or AWQ checkpoint (quantization method {method!r})")
    dtype = dtype or (torch.bfloat16 if device_kind(device) == "cpu" else torch.float16)
    saved = json.loads((checkpoint / "config.json").read_text())["quantization_config"]
    kernel = resolve_kernel(method, kernel, device, int(saved.get("bits", 4)), str(checkpoint))
    ours, _, _ = load_checkpoint(checkpoint, device, kernel, dtype=dtype)
    writer = _gptqmodel().GPTQModel.load(str(checkpoint), backend=kernel, device=device, dtype=dtype)
    try:
        return _compare(writer.model, ours, checkpoint, atol, input_ids, tokens)
    finally:
        del writer, ours
        _free_memory(device)


def _compare(before, after, tokenizer_path: Path, atol: float, input_ids, tokens: int) -> RoundTrip:
    import torch

    if input_ids is None:
        from ..models import embedded_eval_text

        tokenizer = load_tokenizer(tokenizer_path)
        text = embedded_eval_text().read_text(encoding="utf-8")[: tokens * 16]
        input_ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :tokens]
    with torch.inference_mode():
        a = before(input_ids.to(before.device)).logits.float().cpu()
        b = after(input_ids.to(after.device)).logits.float().cpu()
    diff = (a - b).abs()
    return RoundTrip(
        max_abs_logit_diff=float(diff.max()),
        mean_abs_logit_diff=float(diff.mean()),
        top1_agreement=float((a.argmax(-1) == b.argmax(-1)).float().mean()),
        tokens=int(input_ids.numel()),
        atol=atol,
        kernel_before=quantized_linear_classes(before),
        kernel_after=quantized_linear_classes(after),
    )
