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

import time
from typing import Any, Callable

DECODE_BATCH_WINDOWS = 16


def evaluate_decoding(model, windows, new_cache: Callable[[], Any], reference=None,
                      batch_windows: int = DECODE_BATCH_WINDOWS):
    """``(QualityMeasurement, None, TokenScores)`` of ``model`` decoding ``windows`` token by token through caches
    made by ``new_cache`` (one per batch of windows), against ``reference`` (a ``CompactReference``) when given."""
    import torch

    from .quality import _batches, _model_device
    from .scoring import WindowScorer

    device = _model_device(model)
    scorer = WindowScorer(windows, reference, device)
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
                scorer.add(logits[row, -window.n_scored:].log_softmax(dim=-1), window)
            del logits
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    measurement, scores = scorer.finish(start, batch_windows)
    return measurement, None, scores
