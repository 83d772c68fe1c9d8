"""Scoring the eval windows' tokens: each window's log-probabilities in, the figures of ``QualityMeasurement`` and
the per-token ``TokenScores`` out. One scorer for a forward pass over each window (``quality.evaluate``) and for
decoding it token by token through a KV cache (``kv_decode.evaluate_decoding``)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class QualityMeasurement:
    perplexity: float
    nll_nats_per_token: float
    tokens_scored: int
    windows: int
    context_tokens: int
    stride_tokens: int
    mean_kl_nats: float | None  # KL(P_reference || P_model) per scored token; None without a reference
    p99_kl_nats: float | None
    top1_agreement_percent: float | None
    seconds: float
    eval_batch_windows: int = 8  # windows per forward pass
    reference_top_k: int | None = None  # k of the kept reference the KL came from; None: exact (or no reference)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_scored / self.seconds if self.seconds > 0 else math.inf


@dataclass(frozen=True, eq=False)
class TokenScores:
    """Per scored token, in scoring order: CPU tensors (float64, bool) for statistics such as llama.cpp's
    (``measure.stats.quality_stats``). The reference's arrays are None when no reference was given."""

    logprob_target: Any  # float64 [tokens]: log p(target) under the evaluated model
    reference_logprob_target: Any  # float64 [tokens]: log p(target) under the reference
    kl_nats: Any  # float64 [tokens]: KL(P_reference || P_model), from the reference's kept (top-k) form
    top1_match: Any  # bool [tokens]: the model's argmax equals the reference's


class WindowScorer:
    """The windows' scored tokens in order (``offset``: how many came before the next window): the targets'
    log-probabilities and, against a reference (a ``CompactReference`` of the same windows), KL and top-1."""

    def __init__(self, windows, reference, device):
        import torch

        if reference is not None and reference.tokens_scored != windows.tokens_scored:
            raise ValueError(
                f"the reference has {reference.tokens_scored} scored tokens but the windows score "
                f"{windows.tokens_scored}; compute the reference on the same EvalWindows"
            )
        self.windows, self.reference, self.device = windows, reference, device
        self.nll_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.offset = 0
        self._targets: list = []
        self._kl: list = []
        self._match: list = []

    def add(self, logprobs, window):
        """One window's float32 log-probabilities [n_scored, vocab]; its targets' log-probabilities and argmax."""
        import torch

        from .reference import kl_nats

        n = window.n_scored
        targets = torch.tensor(window.target_ids, dtype=torch.long).to(self.device, non_blocking=True)
        target_logprobs = logprobs.gather(1, targets[:, None])[:, 0]
        self.nll_sum -= target_logprobs.sum(dtype=torch.float64)
        self._targets.append(target_logprobs)
        argmax = logprobs.argmax(dim=-1)
        if self.reference is not None:
            self._kl.append(kl_nats(self.reference, self.offset, logprobs))
            self._match.append(self.reference.argmax[self.offset : self.offset + n].to(self.device) == argmax)
        self.offset += n
        return target_logprobs, argmax

    def finish(self, start: float, batch_windows: int) -> tuple[QualityMeasurement, TokenScores]:
        """The figures of every window added, timed from ``start`` (a ``time.perf_counter()``) to now."""
        import torch

        from .stats import percentile

        windows, reference = self.windows, self.reference
        nll = self.nll_sum.item() / windows.tokens_scored
        scores = TokenScores(
            logprob_target=torch.cat(self._targets).double().cpu(),
            reference_logprob_target=None if reference is None else reference.logprob_target.double(),
            kl_nats=None if reference is None else torch.cat(self._kl).cpu(),
            top1_match=None if reference is None else torch.cat(self._match).cpu(),
        )
        mean_kl = p99_kl = top1 = None
        if reference is not None:
            mean_kl = float(scores.kl_nats.mean())
            p99_kl = percentile(scores.kl_nats.numpy(), 99.0)  # the statistics' own percentile: one computation
            top1 = 100.0 * int(scores.top1_match.sum()) / windows.tokens_scored
        measurement = QualityMeasurement(
            perplexity=math.exp(nll), nll_nats_per_token=nll, tokens_scored=windows.tokens_scored,
            windows=len(windows.windows), context_tokens=windows.context_tokens, stride_tokens=windows.stride_tokens,
            mean_kl_nats=mean_kl, p99_kl_nats=p99_kl, top1_agreement_percent=top1,
            seconds=time.perf_counter() - start, eval_batch_windows=batch_windows,
            reference_top_k=None if reference is None else reference.top_k,
        )
        return measurement, scores
