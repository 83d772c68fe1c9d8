"""The baseline file: a reviewable JSON record of measured values and the context needed to read them."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from ..metrics import BASELINE_METRIC, METRIC, QUALITY_KEYS, Measurements
from .settings import BaselineSettings

FORMAT_VERSION = 1
CONTEXT_DECIMALS = {"decode_cv_percent": 2}
STANDARD_ERRORS = ("perplexity_se", "delta_perplexity_se", "ln_ppl_ratio_se", "mean_kl_se_nats",
                   "top1_agreement_se_percent")
CONTEXT_DECIMALS.update({key: METRIC[key].decimals for key in STANDARD_ERRORS})
# Keys earlier versions wrote, and why they no longer compare.
OLD_KEYS = {"vram_peak_bytes": "recorded with the old VRAM definition (the peak over load + evaluation, which "
                               "counted the plugin's evaluation workspace); VRAM is now what the loaded model holds"}


class BaselineFormatError(ValueError):
    """A baseline file that cannot be compared with; the message says what is wrong."""


def dumps(record: dict[str, Any]) -> str:
    """Review-friendly JSON: sorted keys, two-space indent, fixed decimals per metric."""

    def dump(value: Any, key: str | None, depth: int) -> str:
        if isinstance(value, dict):
            if not value:
                return "{}"
            pad = "  " * (depth + 1)
            inner = ",\n".join(f"{pad}{json.dumps(k)}: {dump(v, k, depth + 1)}" for k, v in sorted(value.items()))
            return "{\n" + inner + "\n" + "  " * depth + "}"
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{key} is {value}: a baseline holds finite numbers only")
            decimals = BASELINE_METRIC[key].decimals if key in BASELINE_METRIC else CONTEXT_DECIMALS.get(key)
            if decimals == 0:
                return str(int(round(value)))
            return f"{value:.{decimals}f}" if decimals is not None else json.dumps(value)
        if isinstance(value, (list, tuple)):
            return json.dumps(list(value), ensure_ascii=False)
        return json.dumps(value, ensure_ascii=False)

    return dump(record, None, 0) + "\n"


def loads(text: str) -> dict[str, Any]:
    """Parse a baseline and check its shape, or raise BaselineFormatError saying what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BaselineFormatError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BaselineFormatError(f"expected a JSON object at the top level, found {type(data).__name__}")
    if data.get("format_version") != FORMAT_VERSION:
        raise BaselineFormatError(f"format_version is {data.get('format_version')!r}, expected {FORMAT_VERSION}")
    metrics, context = data.get("metrics"), data.get("context")
    if not isinstance(metrics, dict):
        raise BaselineFormatError(f"'metrics' must be an object of metric -> number, found {metrics!r}")
    if not isinstance(context, dict):
        raise BaselineFormatError(f"'context' must be an object, found {context!r}")
    for key, value in metrics.items():
        if key in OLD_KEYS:
            raise BaselineFormatError(f"metrics.{key}: {OLD_KEYS[key]}: run --snapshot-update")
        if key not in BASELINE_METRIC:
            raise BaselineFormatError(f"unknown metric {key!r} in 'metrics'; known: {', '.join(BASELINE_METRIC)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise BaselineFormatError(f"metrics.{key} is {value!r}, expected a finite number >= 0")
    return data


def identity(model_path: Path, recipe, memo_dir: Path | None = None) -> dict[str, Any]:
    """What was measured, beyond its names: a sha256 over the model's config.json and weight files (per-file
    hashes memoized by qcache), and the recipe's backend and settings. A baseline of other weights or another
    recipe under the same names is not compared with."""
    from ..qcache import model_fingerprint

    files = model_fingerprint(Path(model_path), memo_dir)
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"model_sha256": digest, "recipe_settings": {"backend": recipe.backend, **recipe.options}}


def record(metrics: Measurements, keys: list[str], settings: BaselineSettings,
           identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a baseline stores for ``keys``: the measured values and the context needed to read them."""
    context: dict[str, Any] = {"model": metrics.model, "recipe": metrics.recipe, "device": metrics.device,
                               **settings.environment, **(identity or {})}
    if QUALITY_KEYS & set(keys):
        q = metrics.quality
        # LLM.int8 picks its outlier columns over the whole batch: a different batch is not comparable
        context["eval"] = {"text": settings.eval_text.name, "text_sha256": settings.eval_sha256,
                           "tokens": q.tokens_scored, "context_tokens": q.context_tokens,
                           "batch_windows": q.eval_batch_windows}
        # the standard errors beside the figures, to read a difference by; never compared
        errors = {key: METRIC[key].value(metrics) for key in STANDARD_ERRORS}
        context["standard_errors"] = {k: v for k, v in errors.items() if v is not None}
    if "decode_tokens_per_s" in keys:
        t = metrics.throughput
        context["throughput"] = {"prompt_tokens": t.prompt_tokens, "decode_tokens": t.decode_tokens,
                                 "repeats": t.repeats, "warmup_runs": t.warmup_runs,
                                 "decode_cv_percent": float(t.decode_cv_percent), "decode_mode": t.decode_mode,
                                 "batch_size": t.batch_size}
    if "vram_resident_bytes" in keys:
        context["vram"] = {"source": metrics.vram.source}
    values = {key: BASELINE_METRIC[key].read(metrics) for key in keys}
    return {"format_version": FORMAT_VERSION, "context": context,
            "metrics": {k: (int(v) if BASELINE_METRIC[k].decimals == 0 else float(v)) for k, v in values.items()}}
