"""Quality where a quantized KV cache acts: on decoding. Each eval window is fed one token at a time through the
cache (teacher forcing: the window's own next token, not the model's), so every scored token's next-token
distribution comes from a decode step that read the cache, quantized wherever it holds more than its residual.

The figures are those of ``measure.quality.evaluate`` (perplexity, KL and top-1 against the reference's kept
predictions, per-token scores for the statistics), from the same windows. The reference's predictions are its
single forward pass over each window: decoding the reference incrementally with its unquantized cache gives the
same distributions to float rounding (tested: mean KL below 1e-6 nats in float32), so what the KL measures is the
recipe's weights and its cache. Windows are decoded ``DECODE_BATCH_WINDOWS`` at a time: one decode step per
position for the whole batch.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

DECODE_BATCH_WINDOWS = 16


def evaluate_decoding(model, windows, new_cache: Callable[[], Any], reference=None,
                      batch_windows: int = DECODE_BATCH_WINDOWS):
    """``(QualityMeasurement, None, TokenScores)`` of ``model`` decoding ``windows`` token by token through caches
    made by ``new_cache`` (one per batch of windows), against ``reference`` (a ``CompactReference``) when given."""
    import torch

    from .quality import QualityMeasurement, TokenScores, _batches, _model_device
    from .reference import kl_nats
    from .stats import percentile

    if reference is not None and reference.tokens_scored != windows.tokens_scored:
        raise ValueError(f"the reference has {reference.tokens_scored} scored tokens but the windows score "
                         f"{windows.tokens_scored}; compute the reference on the same EvalWindows")
    device = _model_device(model)
    nll_sum = 0.0
    target_parts, kl_parts, match_parts = [], [], []
    offset = 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in _batches(windows.windows, batch_windows):
            input_ids = torch.tensor([w.input_ids for w in batch], dtype=torch.long, device=device)
            length = input_ids.shape[1]
            n_keep = max(w.n_scored for w in batch)
            cache = new_cache()
            steps = []
            for position in range(length):
                out = model(input_ids=input_ids[:, position:position + 1], past_key_values=cache, use_cache=True)
                if position >= length - n_keep:
                    steps.append(out.logits[:, -1].float())
            logits = torch.stack(steps, dim=1)
            del cache, steps, out
            for row, window in enumerate(batch):
                n = window.n_scored
                logprobs = logits[row, -n:].log_softmax(dim=-1)
                targets = torch.tensor(window.target_ids, dtype=torch.long, device=device)
                target_logprobs = logprobs.gather(1, targets[:, None])[:, 0]
                nll_sum -= float(target_logprobs.sum(dtype=torch.float64))
                target_parts.append(target_logprobs)
                if reference is not None:
                    kl_parts.append(kl_nats(reference, offset, logprobs))
                    match_parts.append(reference.argmax[offset:offset + n].to(device) == logprobs.argmax(dim=-1))
                offset += n
            del logits
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    nll = nll_sum / windows.tokens_scored
    scores = TokenScores(
        logprob_target=torch.cat(target_parts).double().cpu(),
        reference_logprob_target=None if reference is None else reference.logprob_target.double(),
        kl_nats=None if reference is None else torch.cat(kl_parts).cpu(),
        top1_match=None if reference is None else torch.cat(match_parts).cpu(),
    )
    mean_kl = p99_kl = top1 = None
    if reference is not None:
        mean_kl = float(scores.kl_nats.mean())
        p99_kl = percentile(scores.kl_nats.numpy(), 99.0)
        top1 = 100.0 * int(scores.top1_match.sum()) / windows.tokens_scored
    measurement = QualityMeasurement(
        perplexity=math.exp(nll), nll_nats_per_token=nll, tokens_scored=windows.tokens_scored,
        windows=len(windows.windows), context_tokens=windows.context_tokens, stride_tokens=windows.stride_tokens,
        mean_kl_nats=mean_kl, p99_kl_nats=p99_kl, top1_agreement_percent=top1, seconds=seconds,
        eval_batch_windows=batch_windows, reference_top_k=None if reference is None else reference.top_k,
    )
    return measurement, None, scores
