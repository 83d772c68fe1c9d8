"""AutoRound (Intel's ``auto-round``): W4A16 weights by sign-gradient rounding, calibrated, exported in AutoRound's
own format and loaded back by transformers.

SignRound tunes each weight's rounding (and the groups' clipping) for ``iters`` steps per decoder block, on the
recipe's calibration windows (the session's calibration text by default: the embedded model's Northanger Abbey
slice); ``iters = 0`` is plain round-to-nearest (AutoRound's "optimized RTN" off), the baseline it must beat at the
same bits. The export (``format="auto_round"``) is the folder a serving stack loads; it is cached like GPTQ's
(``qcache``: keyed by the weights' content, the recipe, the calibration tokens and the versions), and always loaded
from that folder by ``AutoModelForCausalLM.from_pretrained``, so a fresh quantization and a cache hit run the same
code. Quantization runs seeded, without ``torch.compile`` (a C++ toolchain and minutes on CPU).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import calibration as calib
from .. import qcache
from ..hardware import device_kind, library_versions
from . import Loaded, LoadRequest
from .base import cached_quantization
from .common import default_dtype, load_tokenizer, quantized_linear_classes

REQUIRES: tuple[str, ...] = ("auto_round",)
CACHE_SUBDIR = "auto_round"
KEY_LIBRARIES = ("auto_round", "transformers", "torch")
FIELDS = frozenset({"bits", "group_size", "sym", "iters", "calibration", "calibration_samples", "calibration_seq_len"})
# Enough on the embedded model to beat round-to-nearest's KL clearly (benchmarks/RESULTS.md), in under a minute on
# 2 CPU cores; AutoRound's own defaults (200 iterations, 128 samples of 2048 tokens) are for billions of weights.
DEFAULT_ITERS = 50
DEFAULT_SAMPLES = 32
DEFAULT_SEQ_LEN = 256
SEED = 42


def validate(settings: dict[str, Any]) -> None:
    bits = settings.get("bits", 4)
    if bits not in (2, 3, 4, 8) or isinstance(bits, bool):
        raise ValueError(f"auto_round: bits = {bits!r} is not one of 2, 3, 4, 8")
    group_size = settings.get("group_size", 128)
    if not isinstance(group_size, int) or isinstance(group_size, bool) or (group_size < 1 and group_size != -1):
        raise ValueError(f"auto_round: group_size = {group_size!r} must be a positive integer (or -1: per channel)")
    if not isinstance(settings.get("sym", True), bool):
        raise ValueError(f"auto_round: sym = {settings['sym']!r} must be true or false")
    iters = settings.get("iters", DEFAULT_ITERS)
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 0:
        raise ValueError(f"auto_round: iters = {iters!r} must be an integer >= 0 (0: round to nearest)")
    for name in ("calibration_samples", "calibration_seq_len"):
        value = settings.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"auto_round: {name} = {value!r} must be a positive integer")
    if "calibration" in settings and not isinstance(settings["calibration"], str):
        raise ValueError(f"auto_round: calibration = {settings['calibration']!r} must be a file path")


def spec(settings: dict[str, Any]) -> dict[str, Any]:
    """What shapes the quantized weights (recipe fields with their defaults)."""
    return {"bits": settings.get("bits", 4), "group_size": settings.get("group_size", 128),
            "sym": settings.get("sym", True), "iters": settings.get("iters", DEFAULT_ITERS), "seed": SEED}


def quantize_to_folder(model_path: Path, quant: dict[str, Any], calibration: calib.Calibration, tokenizer,
                       device: str, out_dir: Path, trust_remote_code: bool = False) -> None:
    """Quantize with AutoRound and export in its format into ``out_dir`` (config, weights, tokenizer)."""
    import torch
    from auto_round import AutoRound
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=default_dtype(model_path, device),
                                                 trust_remote_code=trust_remote_code)
    rtn = {"disable_opt_rtn": True} if quant["iters"] == 0 else {}
    work = Path(tempfile.mkdtemp(prefix="pytest-quant-autoround-"))
    try:
        torch.manual_seed(SEED)
        rounder = AutoRound(model, tokenizer, scheme=f"W{quant['bits']}A16", bits=quant["bits"],
                            group_size=quant["group_size"], sym=quant["sym"], iters=quant["iters"],
                            dataset=[tokenizer.decode(w) for w in calibration.windows], nsamples=calibration.samples,
                            seqlen=calibration.seq_len, batch_size=min(8, calibration.samples),
                            device_map="cpu" if device_kind(device) == "cpu" else device, seed=SEED,
                            enable_torch_compile=False, **rtn)
        rounder.quantize_and_save(str(work), format="auto_round")
        exported = next(p.parent for p in sorted(work.rglob("config.json")))
        out_dir.mkdir(parents=True, exist_ok=True)
        for item in exported.iterdir():
            shutil.move(str(item), out_dir / item.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load(request: LoadRequest) -> Loaded:
    from transformers import AutoModelForCausalLM

    settings = dict(request.recipe.options)
    validate(settings)
    quant = spec(settings)
    tokenizer = load_tokenizer(request.model_path, request.trust_remote_code)
    source = settings.get("calibration") or request.calibration_text
    if source is None:
        from ..models import embedded_calibration_text

        source = embedded_calibration_text()
    calibration = calib.build(Path(source), tokenizer, settings.get("calibration_samples", DEFAULT_SAMPLES),
                              settings.get("calibration_seq_len", DEFAULT_SEQ_LEN))
    notes: dict[str, Any] = {"iters": quant["iters"], "calibration": str(source), "calibration_samples": calibration.samples,
                             "calibration_seq_len": calibration.seq_len}
    inputs = {"model": None, "quantize": quant, "device": device_kind(request.device),
              "calibration": {"sha256": calibration.digest(), "samples": calibration.samples,
                              "seq_len": calibration.seq_len},
              "versions": library_versions(KEY_LIBRARIES, missing="absent")}

    def make(staged: Path) -> dict[str, Any]:
        start = time.perf_counter()
        quantize_to_folder(request.model_path, quant, calibration, tokenizer, request.device, staged,
                           request.trust_remote_code)
        return {"quantize_seconds": time.perf_counter() - start}

    seconds, cache, temporary = 0.0, "", None
    if request.cache_dir is None:
        temporary = Path(tempfile.mkdtemp(prefix="pytest-quant-autoround-out-"))
        seconds, saved = make(temporary)["quantize_seconds"], temporary
    else:
        root = Path(request.cache_dir) / CACHE_SUBDIR
        inputs["model"] = qcache.model_fingerprint(request.model_path, root)
        saved, seconds, cache = cached_quantization(root, inputs, make, notes)
    notes["checkpoint"] = str(saved)
    request.before_load()
    try:
        model = AutoModelForCausalLM.from_pretrained(saved, dtype=default_dtype(request.model_path, request.device),
                                                     device_map=request.placement,
                                                     trust_remote_code=request.trust_remote_code)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    model.eval()
    return Loaded(model, tokenizer, str(model.dtype).removeprefix("torch."), kernel=quantized_linear_classes(model),
                  quantize_seconds=seconds, cache=cache, notes=notes)
