"""Prefill and decode tokens/s: warmed up, synchronised, repeated; median and spread reported."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ThroughputMeasurement:
    prefill_tokens_per_s: float  # median over repeats
    decode_tokens_per_s: float  # median over repeats
    prefill_spread_percent: float  # (max - min) / median
    decode_spread_percent: float
    decode_cv_percent: float  # coefficient of variation of the repeats
    prompt_tokens: int
    decode_tokens: int
    repeats: int
    warmup_runs: int


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _one_run(model, prompt, decode_tokens: int) -> tuple[float, float]:
    """Seconds for the prefill of ``prompt`` and for ``decode_tokens`` greedy steps with the KV cache."""
    device = prompt.device
    _sync(device)
    t0 = time.perf_counter()
    out = model(prompt, use_cache=True)
    _sync(device)
    t1 = time.perf_counter()
    cache = out.past_key_values
    token = out.logits[:, -1:].argmax(-1)
    for _ in range(decode_tokens):
        out = model(token, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
    _sync(device)
    t2 = time.perf_counter()
    del out, cache
    return t1 - t0, t2 - t1


def _spread(values: list[float]) -> float:
    median = statistics.median(values)
    return 100.0 * (max(values) - min(values)) / median if median else 0.0


def measure_throughput(model, prompt_ids: list[int], decode_tokens: int, repeats: int, warmup_runs: int) -> ThroughputMeasurement:
    import torch

    if repeats < 1 or warmup_runs < 0 or decode_tokens < 1 or len(prompt_ids) < 1:
        raise ValueError(
            f"throughput needs repeats >= 1, warmup_runs >= 0, decode_tokens >= 1 and a prompt; got "
            f"repeats={repeats}, warmup_runs={warmup_runs}, decode_tokens={decode_tokens}, prompt of {len(prompt_ids)}"
        )
    device = next(model.parameters()).device
    prompt = torch.tensor([prompt_ids], device=device)
    prefill_rates, decode_rates = [], []
    with torch.inference_mode():
        for i in range(warmup_runs + repeats):
            prefill_s, decode_s = _one_run(model, prompt, decode_tokens)
            if i >= warmup_runs:
                prefill_rates.append(len(prompt_ids) / prefill_s)
                decode_rates.append(decode_tokens / decode_s)
    decode_median = statistics.median(decode_rates)
    cv = 100.0 * statistics.pstdev(decode_rates) / decode_median if len(decode_rates) > 1 else 0.0
    return ThroughputMeasurement(
        prefill_tokens_per_s=statistics.median(prefill_rates),
        decode_tokens_per_s=decode_median,
        prefill_spread_percent=_spread(prefill_rates),
        decode_spread_percent=_spread(decode_rates),
        decode_cv_percent=cv,
        prompt_tokens=len(prompt_ids),
        decode_tokens=decode_tokens,
        repeats=repeats,
        warmup_runs=warmup_runs,
    )
