"""Prefill and decode tokens/s: warmed up, synchronised, repeated; median and spread reported.

Decode modes, fastest first: ``compiled`` (the step's forward through ``torch.compile``, then captured as
a CUDA graph over a static KV cache: how gpt-fast and torchao's documentation deploy it), ``cuda-graph``
(transformers' eager step captured as the same graph: the kernels' speed, not Python's) and ``eager`` (a
plain loop over the model with transformers' dynamic KV cache). A mode that cannot run falls back to the
next with its reason (LLM.int8 cannot be captured: eager). On CPU the default is eager; ``compiled`` there
compiles the step without a graph. Figures of different modes are never comparable.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

from .timing_budget import PROBE_STEPS, check_budget

COMPILED = "compiled"
CUDA_GRAPH = "cuda-graph"
EAGER = "eager"
CHAIN = (COMPILED, CUDA_GRAPH, EAGER)  # each falls back to the next
MODES = ("auto", *CHAIN)


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
    decode_mode: str = EAGER  # the mode that ran: "compiled", "cuda-graph" or "eager"
    fallback_reason: str | None = None  # why each mode above the one that ran did not, "; "-joined; None otherwise
    compile_s: float | None = None  # seconds torch.compile took on the decode step (failed attempts too); None: not tried
    compile_cache: str = ""  # inductor's FX graph cache on that compile: "hit", "miss", "partial" or ""
    requested_decode_mode: str = ""  # the mode asked for, "auto" resolved ("compiled" on CUDA, "eager" on CPU)


def resolve_mode(mode: str, device) -> str:
    """``mode`` with "auto" resolved for ``device``: compiled on CUDA, eager elsewhere."""
    if mode not in MODES:
        raise ValueError(f"decode mode must be one of {', '.join(MODES)}; got {mode!r}")
    if mode != "auto":
        return mode
    return COMPILED if getattr(device, "type", str(device).split(":")[0]) == "cuda" else EAGER


def pinned_mode(requested: str, pinned: str | None, device) -> str:
    """The mode a recipe runs in on ``device``: the one asked for ("auto" resolved), or the recipe's pinned
    mode where that is further down the chain (a recipe pinned to "cuda-graph" never compiles, and decodes
    eagerly on CPU; one asked to run eagerly stays eager)."""
    requested = resolve_mode(requested, device)
    if pinned is None:
        return requested
    if pinned not in CHAIN:
        raise ValueError(f"pinned decode mode must be one of {', '.join(CHAIN)}; got {pinned!r}")
    mode = max(requested, pinned, key=CHAIN.index)
    return EAGER if mode == CUDA_GRAPH and resolve_mode("auto", device) != COMPILED else mode


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def eager_run(model, prompt, decode_tokens: int, tokens: list | None = None, new_cache=None) -> tuple[float, float]:
    """Seconds for the prefill of ``prompt`` and for ``decode_tokens`` greedy steps with the dynamic KV cache (or
    the one ``new_cache`` makes: a quantized cache)."""
    device = prompt.device
    _sync(device)
    t0 = time.perf_counter()
    out = model(prompt, use_cache=True, past_key_values=None if new_cache is None else new_cache())
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


def static_run(decoder, prompt, decode_tokens: int, tokens: list | None = None) -> tuple[float, float]:
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


def check_arguments(prompt_ids, decode_tokens: int, repeats: int, warmup_runs: int, batch_size: int, mode: str) -> None:
    if repeats < 1 or warmup_runs < 0 or decode_tokens < 1 or len(prompt_ids) < 1 or batch_size < 1:
        raise ValueError(
            f"throughput needs repeats >= 1, warmup_runs >= 0, decode_tokens >= 1, batch_size >= 1 and a prompt; "
            f"got repeats={repeats}, warmup_runs={warmup_runs}, decode_tokens={decode_tokens}, "
            f"batch_size={batch_size}, prompt of {len(prompt_ids)}"
        )
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")


def model_device(model):
    return next(model.parameters()).device


def cache_length(prompt_tokens: int, decode_tokens: int) -> int:
    """Static cache slots: the prompt, the timed steps, and the compile's and capture's warm-up steps (which
    write past the prompt before any timed run starts again from it)."""
    from .decode_graph import CAPTURE_WARMUP_STEPS

    return prompt_tokens + max(decode_tokens, CAPTURE_WARMUP_STEPS + 1) + 1


@dataclass
class OpenedDecoder:
    """What ``open_decoder`` made of a mode: a decoder (None: decode eagerly), the mode that runs, why the
    modes above it did not, and the compile's seconds and cache status."""

    decoder: object
    mode: str
    reasons: list
    compile_s: float | None = None
    compile_cache: str = ""


def open_decoder(model, prompt, decode_tokens: int, mode: str, fallback: bool = True,
                 compile_cache_dir: str | os.PathLike | None = None) -> OpenedDecoder:
    """A prefilled ``StaticDecoder`` for ``mode`` (compiled and/or captured), falling down the chain. On CPU
    there is no graph: "compiled" compiles the step, "cuda-graph" is an error. ``fallback=False``: raise
    instead of falling back."""
    from .compile_cache import CacheCounter, use_directory
    from .decode_graph import CompileError, StaticDecoder, capture_failure_reason

    device = prompt.device
    cuda = device.type == "cuda"
    if mode == CUDA_GRAPH and not cuda:
        raise ValueError(f"mode='cuda-graph' needs a CUDA device; the model is on {device}. Use mode='auto' or 'eager'")
    chain = [m for m in CHAIN[CHAIN.index(mode):] if cuda or m != CUDA_GRAPH]
    opened = OpenedDecoder(None, EAGER, [])
    for step_mode in chain:
        if step_mode == EAGER:
            opened.mode = EAGER
            return opened
        decoder = StaticDecoder(model, prompt.shape[0], cache_length(prompt.shape[1], decode_tokens))
        try:
            decoder.prefill(prompt)
            if step_mode == COMPILED:
                if compile_cache_dir is not None:
                    use_directory(compile_cache_dir)
                counter = CacheCounter()
                try:
                    opened.compile_s = decoder.compile()
                except CompileError as error:
                    opened.compile_s = error.seconds
                    raise
                finally:
                    opened.compile_cache = counter.status()
            if cuda:
                decoder.capture()
        except Exception as error:  # kernels that sync with the host or allocate outside the pool (LLM.int8)
            decoder.close()
            reason = str(error) if isinstance(error, CompileError) else capture_failure_reason(error)
            if not fallback:
                what = "compiled" if step_mode == COMPILED else "captured as a CUDA graph"
                raise RuntimeError(f"decode step could not be {what}: {reason}") from error
            opened.reasons.append(f"{step_mode}: {reason}")
            continue
        opened.decoder, opened.mode = decoder, step_mode
        return opened
    raise AssertionError("unreachable: the chain ends with eager")


def measure_throughput(
    model,
    prompt_ids: list[int],
    decode_tokens: int,
    repeats: int,
    warmup_runs: int,
    batch_size: int = 1,
    mode: str = "auto",
    *,
    compile_cache_dir: str | os.PathLike | None = None,
    fallback: bool = True,
    new_cache=None,
    budget_s: float | None = None,
    compile_settings: dict | None = None,
) -> ThroughputMeasurement:
    """Time ``warmup_runs + repeats`` runs of a prefill of ``batch_size`` copies of ``prompt_ids`` followed by
    ``decode_tokens`` greedy steps, in ``mode`` ("auto": compiled on CUDA, eager on CPU; "compiled",
    "cuda-graph", "eager"), falling back down the chain with the reason unless ``fallback=False``.
    ``compile_cache_dir``: where inductor and Triton keep their caches (set before the first compile).
    ``new_cache``: makes each run's KV cache (a quantized cache, which only the eager mode can run).
    ``budget_s``: the most seconds the runs may take; a short probe run (a prefill and ``PROBE_STEPS`` steps,
    after the compile and capture) estimates them first, and ``TimingBudgetExceeded`` says the estimate instead
    of running a decode that would take far longer (a kernel that is slow at one token per step).
    ``compile_settings``: inductor settings applied while the step compiles and is captured (those the recipe's
    library made at load, which the session undid for everything else)."""
    import torch

    check_arguments(prompt_ids, decode_tokens, repeats, warmup_runs, batch_size, mode)
    device = model_device(model)
    requested = resolve_mode(mode, device)
    if new_cache is not None and requested != EAGER:
        raise ValueError(f"a KV cache of its own (a quantized cache) is decoded eagerly only; mode {requested!r} asked for")
    prompt = torch.tensor([list(prompt_ids)] * batch_size, device=device)
    prefill_rates, decode_rates = [], []
    with torch.inference_mode():
        if requested != EAGER:
            from .compile_cache import applied

            with applied(compile_settings):
                opened = open_decoder(model, prompt, decode_tokens, requested, fallback, compile_cache_dir)
        else:
            opened = OpenedDecoder(None, EAGER, [])
        decoder = opened.decoder

        def run(steps: int) -> tuple[float, float]:
            if decoder is not None:
                return static_run(decoder, prompt, steps)
            return eager_run(model, prompt, steps, new_cache=new_cache)

        try:
            if budget_s is not None:
                check_budget(run(min(PROBE_STEPS, decode_tokens)), min(PROBE_STEPS, decode_tokens), decode_tokens,
                             warmup_runs + repeats, budget_s, opened.mode)
            for i in range(warmup_runs + repeats):
                prefill_s, decode_s = run(decode_tokens)
                if i >= warmup_runs:
                    prefill_rates.append(batch_size * len(prompt_ids) / prefill_s)
                    decode_rates.append(batch_size * decode_tokens / decode_s)
        finally:
            if decoder is not None:
                decoder.close()
            opened.decoder = decoder = None
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
        decode_mode=opened.mode,
        fallback_reason="; ".join(opened.reasons) or None,
        compile_s=opened.compile_s,
        compile_cache=opened.compile_cache,
        requested_decode_mode=requested,
    )
