"""GPTQ/AWQ quantization in a child process: ``python -m pytest_quant.backends.quantize_child JOB.json``.

The measuring process (pytest's) never imports GPTQModel's quantization machinery: quantizing leaves
library state behind (worker pools, CUDA workspaces and caches, 675 MiB still allocated after a 1.1B-shape
GPTQ model is released), and the order and history of a long-lived process changes its numerics. The
parent (``backends.gptqmodel.quantize_in_child``) writes a job file, runs this module with the same
interpreter and environment, and publishes the saved folder to the cache; this module only quantizes and
saves.

Determinism, as far as the libraries allow (see ``make_deterministic``):

- python ``random``, numpy and torch (every CUDA device too) are seeded with ``SEED`` before GPTQModel is
  imported. GPTQ and AWQ as this plugin runs them draw no random numbers (the calibration windows come
  from the parent, already cut; GPTQModel sorts them by length, a stable sort of equal lengths, and shuffles
  only for ``calibration_sort="shuffle"``), so the seeds are a guard, not a fix.
- ``torch.use_deterministic_algorithms(True, warn_only=True)``: deterministic CUDA kernels where torch has
  them (a warning, not an error, where it has none), and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (set by the
  parent, before CUDA starts) so cuBLAS reductions are repeatable.
- torch's intra-op thread count is fixed to ``threads_for()`` (2, fewer on a 1-core machine): CPU matrix
  products may split their sums by thread, so the count is part of the arithmetic. It is not in the cache
  key (that would throw every existing entry away); a fixed number makes it the same everywhere instead.
- ``auto_forward_data_parallel=False``: GPTQModel otherwise fans calibration batches over every visible GPU
  of the same kind and adds their Hessian partials in completion order; one device adds them in order.
  (GPTQModel drops the field from the saved config, so the checkpoint reads the same.)
- ``PYTHONHASHSEED=0`` (set by the parent): set and dict orders over strings are the same in every run.

What stays outside: a different CPU instruction set (AVX-512 vs AVX2 kernels), GPU model, or library
version gives other rounding; the cache key holds the device kind and library versions, and the gate's
tolerances cover the rest (``benchmarks/bench_quantize_spread.py``).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

SEED = 0
MAX_THREADS = 2
CUBLAS_WORKSPACE = ":4096:8"
THREADS_ENV = "PYTEST_QUANT_QUANTIZE_THREADS"  # overrides the fixed count (to measure what it changes)


def threads_for(cores: int | None = None) -> int:
    """The intra-op thread count quantization runs with: ``MAX_THREADS``, fewer only on a smaller machine.

    The committed CPU baselines were recorded on 2-core machines with 2 threads; the same count on a
    16-core GPU host keeps the CPU-side arithmetic alike (on CUDA the work is on the GPU, so it costs little).
    ``PYTEST_QUANT_QUANTIZE_THREADS`` overrides it (a different count may give different weights).
    """
    override = os.environ.get(THREADS_ENV, "").strip()
    if override:
        return max(1, int(override))
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, min(MAX_THREADS, cores))


def child_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: the parent's (GPTQMODEL_CPU_WORKERS, CUDA_VISIBLE_DEVICES, ... included),
    plus what must be set before the child starts (cuBLAS workspace, hash seed) and the project on the path."""
    env = dict(os.environ if base is None else base)
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    env["PYTHONHASHSEED"] = str(SEED)
    env.setdefault("PYTHONUNBUFFERED", "1")
    project_root = str(Path(__file__).resolve().parents[2])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if project_root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([project_root, *paths])
    return env


def make_deterministic(device: str, seed: int = SEED) -> dict[str, object]:
    """Seed every generator, ask torch for deterministic algorithms, fix the thread count; what was set."""
    import numpy as np
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device as well
    threads = threads_for()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also fills every new tensor's memory with NaN to catch reads of it; that changes no
    # result of correct code and made AWQ's many allocations 10x slower on CPU (830 s for the embedded model).
    torch.utils.deterministic.fill_uninitialized_memory = False
    if device.startswith("cuda"):
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        # TF32 is left alone: GPTQModel's quantization loop runs under its own tf32_high_precision_guard
        # (full fp32 for the Hessian products) whatever the process had set.
    return {"seed": seed, "torch_threads": threads, "deterministic_algorithms": True,
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            "pythonhashseed": os.environ.get("PYTHONHASHSEED")}


def write_job(path: Path, model_path: Path, spec, windows, device: str, out_dir: Path, result_file: Path,
              trust_remote_code: bool = False) -> None:
    """The job file the child reads: the spec fields quantization needs and the exact calibration windows;
    ``trust_remote_code`` (--quant-trust-remote-code) is what GPTQModel is told when it loads the model."""
    job = {
        "trust_remote_code": bool(trust_remote_code),
        "model_path": str(model_path),
        "method": spec.method,
        "quantize": spec.quantize,
        "batch_size": spec.batch_size,
        "windows": [list(w) for w in windows],
        "device": device,
        "out_dir": str(out_dir),
        "result_file": str(result_file),
    }
    Path(path).write_text(json.dumps(job), encoding="utf-8")


def run(job: dict) -> dict:
    device = job["device"]
    settings = make_deterministic(device)
    from .gptqmodel_spec import import_gptqmodel

    gptqmodel = import_gptqmodel()
    config = gptqmodel.QuantizeConfig(**job["quantize"])
    config.auto_forward_data_parallel = False
    dataset = [{"input_ids": list(w), "attention_mask": [1] * len(w)} for w in job["windows"]]
    start = time.perf_counter()
    qmodel = gptqmodel.GPTQModel.load(job["model_path"], config, device=device,
                                      trust_remote_code=bool(job.get("trust_remote_code", False)))
    qmodel.quantize(dataset, batch_size=job["batch_size"])
    qmodel.save(job["out_dir"])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "determinism": settings, "pid": os.getpid()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m pytest_quant.backends.quantize_child JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    result = run(job)
    Path(job["result_file"]).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
