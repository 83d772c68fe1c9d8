"""GPTQ and AWQ through GPTQModel: quantized on the fly into an on-disk cache, or pre-quantized checkpoints.

A recipe is quantized once with GPTQModel, saved as a checkpoint into the cache (``pytest_quant.qcache``)
and always loaded from that folder by transformers, so a fresh quantization and a cache hit run the very
same code. The kernel is chosen explicitly and never left to GPTQModel's automatic choice, which on Hopper
picks Machete (its JIT build downloads CUTLASS, so it fails offline) and on CPU JIT-compiles AVX512
extensions for minutes: the recipe's ``kernel`` wins, else the torch kernel on CPU and the Triton kernel on
CUDA (torch where Triton is missing). ``Loaded.kernel`` names the classes of the layers that were loaded.

``load`` quantizes in a child process (``backends.quantize_child``): GPTQModel's quantization leaves library
state behind (worker pools, CUDA workspaces, allocations that outlive the model), and the measuring process
must only load the artifact. The child is seeded and runs torch's deterministic algorithms with a fixed
thread count; the parent publishes the cache entry. ``quantize`` still quantizes in this process.
"""

from __future__ import annotations

import atexit
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import calibration as calib
from .. import qcache
from ..hardware import device_kind, library_versions
from . import Loaded, LoadRequest
from .base import cached_quantization, drop_import_tracebacks
from .checkpoint import load_checkpoint
from .common import default_dtype, load_tokenizer, quantized_linear_classes
from .gptqmodel_spec import QuantSpec, import_gptqmodel, prepare_environment, spec_from_recipe

CACHE_SUBDIR = "gptqmodel"
KEY_LIBRARIES = ("gptqmodel", "transformers", "torch")


@dataclass(frozen=True)
class Quantized:
    """A model GPTQModel has just quantized, and how long that took (loading it, quantizing, saving).

    The model in memory is packed the way GPTQModel saves it (GPTQ zero points in the v1 layout), not
    ready to run: load the saved folder to use it.
    """

    qmodel: Any  # gptqmodel BaseQModel; ``.model`` is the transformers module
    seconds: float
    saved_to: Path | None


def calibration_source(spec: QuantSpec, request: LoadRequest) -> Path:
    """The recipe's own calibration file, else the session's, else the embedded text."""
    if spec.calibration is not None:
        return spec.calibration
    if request.calibration_text is not None:
        return Path(request.calibration_text)
    from ..models import embedded_calibration_text

    return embedded_calibration_text()


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
        "versions": library_versions(KEY_LIBRARIES, missing="absent"),
    }


# -- quantizing and loading -----------------------------------------------------------------------------

def quantize(model_path: Path, spec: QuantSpec, calibration: calib.Calibration, device: str,
             out_dir: Path | None = None, trust_remote_code: bool = False) -> Quantized:
    """Quantize with GPTQModel (and save to ``out_dir`` when given); the model stays in memory.

    The seconds cover loading the unquantized model, quantizing and saving: what a cache hit saves.
    """
    gptqmodel = import_gptqmodel()
    config = gptqmodel.QuantizeConfig(**spec.quantize)
    start = time.perf_counter()
    qmodel = gptqmodel.GPTQModel.load(str(model_path), config, device=device, trust_remote_code=trust_remote_code)
    qmodel.quantize(calibration.as_dataset(), batch_size=spec.batch_size)
    if out_dir is not None:
        qmodel.save(str(out_dir))
    return Quantized(qmodel, time.perf_counter() - start, Path(out_dir) if out_dir is not None else None)


def load(request: LoadRequest) -> Loaded:
    prepare_environment()
    spec = spec_from_recipe(request.recipe, request.device)
    tokenizer = load_tokenizer(request.model_path, request.trust_remote_code)
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
        child = quantize_in_child(request.model_path, spec, calibration, request.device, saved, request.recipe.name,
                                  request.trust_remote_code)
        seconds = child["seconds"]
        notes["quantize_child"] = child["determinism"]
    else:
        root = Path(request.cache_dir) / CACHE_SUBDIR
        inputs = cache_inputs(request.model_path, spec, calibration, request.device, memo_dir=root)

        def make(staged: Path) -> dict[str, Any]:
            child = quantize_in_child(request.model_path, spec, calibration, request.device, staged,
                                      request.recipe.name, request.trust_remote_code)
            return {"quantize_seconds": child["seconds"], "quantize_child": child["determinism"]}

        saved, seconds, cache = cached_quantization(root, inputs, make, notes)
    notes["checkpoint"] = str(saved)
    # The source model's dtype, as the reference runs in, whatever GPTQModel quantized in.
    dtype = default_dtype(request.model_path, request.device)
    request.before_load()
    model, _, _ = load_checkpoint(saved, request.device, spec.kernel, dtype=dtype, device_map=request.device_map,
                                **spec.load_options)
    drop_import_tracebacks("gptqmodel")  # kernels imported by the load: their stored errors hold our frames
    return Loaded(
        model,
        tokenizer,
        str(model.dtype).removeprefix("torch."),
        kernel=quantized_linear_classes(model),
        quantize_seconds=seconds,
        cache=cache,
        notes=notes,
    )


# -- quantizing in a child process ------------------------------------------------------------------------

CHILD_MODULE = "pytest_quant.backends.quantize_child"
TAIL_LINES = 30


class QuantizeChildError(RuntimeError):
    """The child process that quantizes a recipe failed; the message names the recipe and shows its last lines."""


def quantize_in_child(model_path: Path, spec: QuantSpec, calibration: calib.Calibration, device: str,
                      out_dir: Path, recipe_name: str = "", trust_remote_code: bool = False) -> dict[str, Any]:
    """Quantize with GPTQModel in a fresh Python process and save into ``out_dir``.

    Returns the child's report: ``seconds`` (loading, quantizing, saving), ``determinism`` (the seed, thread
    count and settings it ran with) and its ``pid``.

    The child (``python -m pytest_quant.backends.quantize_child``) gets this process's environment (with
    ``prepare_environment``'s GPTQMODEL_CPU_WORKERS, CUDA_VISIBLE_DEVICES, ...) plus what determinism needs
    before it starts (``quantize_child.child_environment``), and the exact calibration windows the cache key
    was computed from. Its output is kept in a log file; on failure the error names the recipe, the exit
    code and the log's last ``TAIL_LINES`` lines. Nothing of GPTQModel is imported here.
    """
    from . import quantize_child

    prepare_environment()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pytest-quant-child-"))
    try:
        job, result_file, log_file = work / "job.json", work / "result.json", work / "child.log"
        quantize_child.write_job(job, model_path, spec, calibration.windows, device, out_dir, result_file,
                                 trust_remote_code)
        start = time.perf_counter()
        with open(log_file, "wb") as log:
            proc = subprocess.run(
                [sys.executable, "-m", CHILD_MODULE, str(job)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=quantize_child.child_environment(), check=False,
            )
        wall = time.perf_counter() - start
        if proc.returncode != 0 or not result_file.is_file():
            what = f"recipe {recipe_name}" if recipe_name else f"{spec.method} quantization"
            how = (f"exit code {proc.returncode}" if proc.returncode >= 0
                   else f"killed by signal {-proc.returncode}")
            if proc.returncode == 0:
                how = "exit code 0 but no result written"
            tail = log_tail(log_file, TAIL_LINES)
            raise QuantizeChildError(
                f"{what}: quantizing {model_path} with GPTQModel on {device} in a child process failed ({how}); "
                f"its last {len(tail)} lines of output:\n" + "\n".join(tail)
            )
        result = json.loads(result_file.read_text(encoding="utf-8"))
        result["seconds"] = float(result.get("seconds", wall))
        result.setdefault("determinism", {})
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def log_tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` non-blank lines of a log, progress bars' carriage-return redraws collapsed."""
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        return [f"(no output: {exc})"]
    kept = []
    for raw in text.split("\n"):
        line = raw.rstrip("\r").rsplit("\r", 1)[-1].rstrip()
        if line.strip():
            kept.append(line)
    return kept[-lines:] or ["(no output)"]
