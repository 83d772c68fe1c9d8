"""Prefill and decode tokens/s: warmed up, synchronised, repeated; median and spread reported.

On a GPU the timed decode replays one step captured as a CUDA graph over a static KV cache
(``decode_graph``), so the figure is the kernels' speed, not Python's; a model whose kernels cannot be
captured (LLM.int8) falls back to eager decoding by itself and says why. On CPU decoding is always eager.
Eager decoding is a plain loop over the model with transformers' dynamic KV cache.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

CUDA_GRAPH = "cuda-graph"
EAGER = "eager"
MODES = ("auto", EAGER, CUDA_GRAPH)


@dataclass(frozen=True)
class ThroughputMeasurement:
    prefill_tokens_per_s: float  # median over repeats, all sequences of the batch
    decode_tokens_per_s: float  # median over repeats, aggregate: batch_size x decoded tokens / s
    decode_tokens_per_s_per_sequence: float  # the same / batch_size (what one user of a batch sees)
    prefill_spread_percent: float  # (max - min) / median
    decode_spread_percent: float
    decode_cv_percent: float  # coefficient of variation of the repeats (population std / median)
    prompt_tokens: int  # per sequence
    decode_tokens: int  # per sequence and repeat
    repeats: int
    warmup_runs: int
    batch_size: int = 1
    decode_mode: str = EAGER  # "cuda-graph" or "eager": figures of different modes are not comparable
    fallback_reason: str | None = None  # why a capture was attempted and eager ran instead; None otherwise


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _eager_run(model, prompt, decode_tokens: int, tokens: list | None = None) -> tuple[float, float]:
    """Seconds for the prefill of ``prompt`` and for ``decode_tokens`` greedy steps with the dynamic KV cache."""
    device = prompt.device
    _sync(device)
    t0 = time.perf_counter()
    out = model(prompt, use_cache=True)
    _sync(device)
    t1 = time.perf_counter()
    cache = out.past_key_values
    token = out.logits[:, -1:].argmax(-1)
    for _ in range(decode_tokens):
        if tokens is not None:
            tokens.append(token)
        out = model(token, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
    if tokens is not None:
        tokens.append(token)
    _sync(device)
    t2 = time.perf_counter()
    del out, cache
    return t1 - t0, t2 - t1


def _graph_run(decoder, prompt, decode_tokens: int, tokens: list | None = None) -> tuple[float, float]:
    """The same over a static cache: eager prefill, then ``decode_tokens`` steps (graph replays if captured)."""
    device = prompt.device
    _sync(device)
    t0 = time.perf_counter()
    decoder.prefill(prompt)
    _sync(device)
    t1 = time.perf_counter()
    for _ in range(decode_tokens):
        if tokens is not None:
            tokens.append(decoder.token_ids.clone())
        decoder.step()
    if tokens is not None:
        tokens.append(decoder.token_ids.clone())
    _sync(device)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def _spread(values: list[float]) -> float:
    median = statistics.median(values)
    return 100.0 * (max(values) - min(values)) / median if median else 0.0


def _check(prompt_ids, decode_tokens: int, repeats: int, warmup_runs: int, batch_size: int, mode: str) -> None:
    if repeats < 1 or warmup_runs < 0 or decode_tokens < 1 or len(prompt_ids) < 1 or batch_size < 1:
        raise ValueError(
            f"throughput needs repeats >= 1, warmup_runs >= 0, decode_tokens >= 1, batch_size >= 1 and a prompt; "
            f"got repeats={repeats}, warmup_runs={warmup_runs}, decode_tokens={decode_tokens}, "
            f"batch_size={batch_size}, prompt of {len(prompt_ids)}"
        )
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")


def _model_device(model):
    return next(model.parameters()).device


def cache_length(prompt_tokens: int, decode_tokens: int) -> int:
    """Static cache slots: the prompt, the timed steps, and the capture's warm-up steps (which write past the
    prompt before any timed run starts again from it)."""
    from .decode_graph import CAPTURE_WARMUP_STEPS

    return prompt_tokens + max(decode_tokens, CAPTURE_WARMUP_STEPS) + 1


def _open_decoder(model, prompt, decode_tokens: int, mode: str):
    """A captured ``StaticDecoder`` for ``mode`` "cuda-graph"/"auto" on a GPU, and why not (None, reason)."""
    from .decode_graph import StaticDecoder, capture_failure_reason

    device = prompt.device
    if device.type != "cuda":
        if mode == CUDA_GRAPH:
            raise ValueError(f"mode='cuda-graph' needs a CUDA device; the model is on {device}. Use mode='auto' or 'eager'")
        return None, None
    decoder = StaticDecoder(model, prompt.shape[0], cache_length(prompt.shape[1], decode_tokens))
    try:
        decoder.prefill(prompt)
        decoder.capture()
    except Exception as error:  # kernels that sync with the host or allocate outside the pool (LLM.int8)
        decoder.close()
        if mode == CUDA_GRAPH:
            raise RuntimeError(f"decode step could not be captured as a CUDA graph: {capture_failure_reason(error)}") from error
        return None, capture_failure_reason(error)
    return decoder, None


def measure_throughput(
    model,
    prompt_ids: list[int],
    decode_tokens: int,
    repeats: int,
    warmup_runs: int,
    batch_size: int = 1,
    mode: str = "auto",
) -> ThroughputMeasurement:
    """Time ``warmup_runs + repeats`` runs of a prefill of ``batch_size`` copies of ``prompt_ids`` followed by
    ``decode_tokens`` greedy steps. ``mode``: "auto" (a CUDA graph on GPU, eager if the capture fails and
    on CPU), "cuda-graph" (raises if it cannot be captured, or on CPU) or "eager"."""
    import torch

    _check(prompt_ids, decode_tokens, repeats, warmup_runs, batch_size, mode)
    device = _model_device(model)
    prompt = torch.tensor([list(prompt_ids)] * batch_size, device=device)
    prefill_rates, decode_rates = [], []
    decoder, fallback_reason = None, None
    with torch.inference_mode():
        if mode != EAGER:
            decoder, fallback_reason = _open_decoder(model, prompt, decode_tokens, mode)
        try:
            for i in range(warmup_runs + repeats):
                if decoder is not None:
                    prefill_s, decode_s = _graph_run(decoder, prompt, decode_tokens)
                else:
                    prefill_s, decode_s = _eager_run(model, prompt, decode_tokens)
                if i >= warmup_runs:
                    prefill_rates.append(batch_size * len(prompt_ids) / prefill_s)
                    decode_rates.append(batch_size * decode_tokens / decode_s)
        finally:
            decode_mode = EAGER if decoder is None else CUDA_GRAPH
            if decoder is not None:
                decoder.close()
            del decoder
    decode_median = statistics.median(decode_rates)
    cv = 100.0 * statistics.pstdev(decode_rates) / decode_median if len(decode_rates) > 1 else 0.0
    return ThroughputMeasurement(
        prefill_tokens_per_s=statistics.median(prefill_rates),
        decode_tokens_per_s=decode_median,
        decode_tokens_per_s_per_sequence=decode_median / batch_size,
        prefill_spread_percent=_spread(prefill_rates),
        decode_spread_percent=_spread(decode_rates),
        decode_cv_percent=cv,
        prompt_tokens=len(prompt_ids),
        decode_tokens=decode_tokens,
        repeats=repeats,
        warmup_runs=warmup_runs,
        batch_size=batch_size,
        decode_mode=decode_mode,
        fallback_reason=fallback_reason,
    )


def greedy_tokens(model, prompt_ids: list[int], decode_tokens: int, path: str, batch_size: int = 1) -> list[list[int]]:
    """The ``decode_tokens + 1`` greedy tokens after ``prompt_ids`` (the prefill's, then one per step), per
    sequence, decoded by ``path``: "cuda-graph" (the captured step replayed; GPU only), "static" (the same
    step over the same static cache, run eagerly) or "eager" (the dynamic-cache loop that eager timing runs).
    A GPU test checks that the graph's tokens equal the others'."""
    import torch

    from .decode_graph import StaticDecoder

    if path not in (CUDA_GRAPH, "static", EAGER):
        raise ValueError(f"path must be 'cuda-graph', 'static' or 'eager'; got {path!r}")
    _check(prompt_ids, decode_tokens, 1, 0, batch_size, "auto")
    device = _model_device(model)
    prompt = torch.tensor([list(prompt_ids)] * batch_size, device=device)
    tokens: list = []
    with torch.inference_mode():
        if path == EAGER:
            _eager_run(model, prompt, decode_tokens, tokens)
        else:
            with StaticDecoder(model, batch_size, cache_length(prompt.shape[1], decode_tokens)) as decoder:
                if path == CUDA_GRAPH:
                    decoder.prefill(prompt)
                    decoder.capture()
                _graph_run(decoder, prompt, decode_tokens, tokens)
        stacked = torch.cat(tokens, dim=1).cpu()
    return stacked.tolist()
