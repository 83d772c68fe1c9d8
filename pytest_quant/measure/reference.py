"""The unquantized model's predictions, kept compactly for KL divergence and top-1 agreement, and cached on disk.

Per scored token the reference keeps its k most probable tokens (log-probabilities and indices), the log of
the probability mass r outside them, k tokens sampled from that tail in proportion to their probability
(indices and log-probabilities), the log-probability of the target token and its argmax. KL(P || Q) is

    sum_{i in top-k} p_i log(p_i / q_i)  +  r log(r / q_tail)  +  r KL(P_tail || Q_tail)

where q_tail is the model's mass outside the reference's top k (computed exactly from the model's own
log-probabilities) and P_tail, Q_tail are both distributions renormalised over the tail. The first two terms
are exact; the tail's own divergence is estimated from the samples with the non-negative, unbiased estimator
E_{P_tail}[rho - 1 - log rho], rho = q_tail_i / p_tail_i (exact in expectation because Q_tail sums to 1 over
the tail). The samples are systematic (the tail's cumulative distribution read at (j + 1/2) / k), so the
reference is deterministic. Without the tail term (top-k plus one bucket, never above the exact KL) the error
on the embedded model was -18% at k=128 and -1.6% at k=2048 (benchmarks/bench_compact_kl.py): high-entropy
predictions keep much of their divergence in the tail. Perplexity, the target's log-probability and top-1
agreement stay exact. The exact mode (``top_k=None``) keeps every log-probability, as the plugin did before.

How accurate the tail term is, and why the default k is 510. Only r KL(P_tail || Q_tail) is estimated. A
quantization's logit errors are close to independent across the vocabulary, so rho - 1 - log rho is about
(log rho)^2 / 2, chi-square-like, and its mean over n samples has a relative standard error of about
sqrt(2 / n); a tail token the quantized model boosts (q_tail_i >> p_tail_i) adds a heavy right tail. A
token's error is therefore about r(k) sqrt(2 / k), r(k) the mass outside its top k, and what is wrong is
the spread, not the mean: the mean KL is within 0.05% at any k, while a percentile can land on a token whose
estimate came out high or low (at k = 256: p99 of SmolLM2-135M bnb-nf4 +0.87%, p1 of a perturbed embedded
model over 1,024 tokens +2.3%). Doubling k to 510 (the most the 64 MiB ceiling at 8192 tokens allows) shrinks
r(k) by about 0.7 and sqrt(2 / k) by 0.7: half the per-token error (99th percentile 4.8-5.4% -> 2.1-2.6%,
largest 10-28% -> 4-13%), and every reported KL percentile within 0.33% of exact on the benchmark's models
and recipes, those below 1e-4 nats within 1e-7 nats (benchmarks/RESULTS.md). Per-token budgets that follow
the tail mass, a regression control variate and sampling stratified by probability were tried and did not
do better than this uniform split (RESULTS.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXACT = "exact"
# Chosen by benchmarks/bench_compact_kl.py: the embedded model (vocab 8192) and SmolLM2-135M (vocab 49152),
# 8192 scored tokens, bnb-int8, bnb-nf4 and RTN w4g128 on CPU: every KL percentile the plugin reports (p99.9 ..
# p0.1) within 0.33% of exact (below 1e-4 nats within 1e-7 nats), mean within 0.01%, at 63.8 MiB for 8192
# tokens: the most the 64 MiB ceiling allows. At 256 (the default before 2026-12): within 0.87%, per-token
# errors twice as large (see the module's docstring).
DEFAULT_TOP_K = 510
FORMAT = "pytest-quant compact reference 2"
# What one scored token costs: k x (float32 log-prob + int32 index) for the top k and again for the k tail
# samples, + target log-prob, tail log-mass (float32) and argmax (int32).
BYTES_PER_TOKEN_FIXED = 4 + 4 + 4
BYTES_PER_K = 2 * (4 + 4)


def kept_bytes(tokens: int, top_k: int) -> int:
    """Bytes a compact reference of ``tokens`` scored tokens keeps at ``top_k``."""
    return tokens * (top_k * BYTES_PER_K + BYTES_PER_TOKEN_FIXED)


@dataclass(frozen=True, eq=False)
class CompactReference:
    """The reference's predictions over the scored tokens of one ``EvalWindows``, in scoring order (CPU tensors).

    Size: ``tokens_scored x (16 k + 12)`` bytes, whatever the vocabulary. For 8192 tokens at the default
    k = 510: 8192 x 8172 B = 63.8 MiB (the exact float32 form at a 128,256 vocabulary: 8192 x 128256 x 4 B =
    4.2 GB). The 64 MiB ceiling at 8192 tokens allows k <= (64 MiB / 8192 - 12) / 16 = 511.
    """

    vocab_size: int
    top_k: int | None  # None: exact (topk_logprobs holds the whole vocabulary in index order)
    logprob_target: Any  # float32 [tokens]: log p(target) under the reference, exact
    argmax: Any  # int32 [tokens]: the reference's most probable token, exact
    topk_logprobs: Any  # float32 [tokens, k] (exact: [tokens, vocab])
    topk_indices: Any  # int32 [tokens, k]; None when exact
    tail_logmass: Any  # float32 [tokens]: log of the probability outside the top k (-inf when exact)
    tail_sample_indices: Any  # int32 [tokens, k]: tokens drawn from the tail; None when exact
    tail_sample_logprobs: Any  # float32 [tokens, k]: their log-probabilities; None when exact

    @property
    def tokens_scored(self) -> int:
        return int(self.logprob_target.shape[0])

    @property
    def is_exact(self) -> bool:
        return self.topk_indices is None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in _tensors(self).values())


def _tensors(reference: CompactReference) -> dict[str, Any]:
    names = ("logprob_target", "argmax", "topk_logprobs", "topk_indices", "tail_logmass",
             "tail_sample_indices", "tail_sample_logprobs")
    return {name: getattr(reference, name) for name in names if getattr(reference, name) is not None}


def parse_top_k(value) -> int | None:
    """``"exact"`` -> None (keep everything); a positive int -> itself."""
    if value == EXACT:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"the reference's top-k must be a positive integer or 'exact', got {value!r}")
    return value


class ReferenceBuilder:
    """Filled one window at a time (on the model's device) by ``evaluate``; ``finish()`` gives the reference."""

    def __init__(self, tokens_scored: int, vocab_size: int, top_k: int | None):
        import torch

        # a tail needs at least one token: k >= vocab is the exact form
        self.top_k = None if top_k is None or top_k >= vocab_size else top_k
        self.vocab_size = vocab_size
        width = vocab_size if self.top_k is None else self.top_k
        self.logprob_target = torch.empty(tokens_scored, dtype=torch.float32)
        self.argmax = torch.empty(tokens_scored, dtype=torch.int32)
        self.topk_logprobs = torch.empty((tokens_scored, width), dtype=torch.float32)
        self.tail_logmass = torch.full((tokens_scored,), -math.inf, dtype=torch.float32)
        self.topk_indices = self.tail_sample_indices = self.tail_sample_logprobs = None
        if self.top_k is not None:
            self.topk_indices = torch.empty((tokens_scored, width), dtype=torch.int32)
            self.tail_sample_indices = torch.empty((tokens_scored, width), dtype=torch.int32)
            self.tail_sample_logprobs = torch.empty((tokens_scored, width), dtype=torch.float32)

    def add(self, offset: int, logprobs, logprob_target, argmax) -> None:
        """``logprobs``: float32 [n, vocab] for the scored tokens ``offset .. offset + n``."""
        n = logprobs.shape[0]
        rows = slice(offset, offset + n)
        self.logprob_target[rows].copy_(logprob_target)
        self.argmax[rows].copy_(argmax)
        if self.top_k is None:
            self.topk_logprobs[rows].copy_(logprobs)
            return
        values, indices = logprobs.topk(self.top_k, dim=-1, sorted=False)
        self.topk_logprobs[rows].copy_(values)
        self.topk_indices[rows].copy_(indices)
        self.tail_logmass[rows].copy_(_outside_logmass(logprobs, indices))
        samples = _systematic_tail_samples(logprobs, indices, self.top_k)
        self.tail_sample_indices[rows].copy_(samples)
        self.tail_sample_logprobs[rows].copy_(logprobs.gather(1, samples))

    def finish(self) -> CompactReference:
        return CompactReference(
            self.vocab_size, self.top_k, self.logprob_target, self.argmax, self.topk_logprobs, self.topk_indices,
            self.tail_logmass, self.tail_sample_indices, self.tail_sample_logprobs,
        )


def compact(reference: CompactReference, top_k: int, rows_per_chunk: int = 512) -> CompactReference:
    """The compact form of an exact reference, as ``evaluate`` would have kept it at ``top_k``."""
    import torch

    if not reference.is_exact:
        raise ValueError(f"compact() needs an exact reference; this one keeps top {reference.top_k}")
    builder = ReferenceBuilder(reference.tokens_scored, reference.vocab_size, top_k)
    for start in range(0, reference.tokens_scored, rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        logprobs = reference.topk_logprobs[rows].to(torch.float32)
        builder.add(start, logprobs, reference.logprob_target[rows], reference.argmax[rows])
    return builder.finish()


def _outside_logmass(logprobs, indices):
    """log of the probability outside ``indices`` per row, from the log-probabilities themselves (no 1 - sum
    cancellation when the top k hold nearly all the mass)."""
    import torch

    return logprobs.scatter(1, indices, -torch.inf).logsumexp(dim=-1)


def _systematic_tail_samples(logprobs, indices, count: int):
    """``count`` tokens per row outside ``indices``, read from the tail's cumulative distribution at
    (j + 1/2) / count: deterministic, and each stands for 1/count of the tail's mass."""
    import torch

    tail = logprobs.exp().scatter(1, indices, 0.0)
    cdf = tail.cumsum(dim=-1)
    cdf /= cdf[:, -1:].clamp_min(torch.finfo(cdf.dtype).tiny)
    points = (torch.arange(count, device=logprobs.device, dtype=cdf.dtype) + 0.5) / count
    samples = torch.searchsorted(cdf, points.expand(logprobs.shape[0], -1).contiguous())
    return samples.clamp_(max=logprobs.shape[1] - 1)


def kl_nats(reference: CompactReference, offset: int, logprobs):
    """KL(reference || model) in nats, float64 [n], for the scored tokens ``offset .. offset + n`` whose model
    log-probabilities are ``logprobs`` (float32 [n, vocab], on any device)."""
    import torch

    n = logprobs.shape[0]
    rows = slice(offset, offset + n)
    device = logprobs.device
    ref = reference.topk_logprobs[rows].to(device, dtype=torch.float32)
    p = ref.exp()
    if reference.is_exact:
        # 0 * log(0) terms are 0, not nan
        return torch.where(p > 0, p * (ref - logprobs), 0.0).sum(dim=-1, dtype=torch.float64)
    indices = reference.topk_indices[rows].to(device, dtype=torch.long)
    top = torch.where(p > 0, p * (ref - logprobs.gather(1, indices)), 0.0).sum(dim=-1, dtype=torch.float64)
    tail = reference.tail_logmass[rows].to(device, dtype=torch.float64)
    model_tail = _outside_logmass(logprobs, indices).double()
    samples = reference.tail_sample_indices[rows].to(device, dtype=torch.long)
    # log rho = log q_tail_i - log p_tail_i for each sample
    log_rho = (logprobs.gather(1, samples).double() - model_tail[:, None]) - (
        reference.tail_sample_logprobs[rows].to(device, dtype=torch.float64) - tail[:, None]
    )
    within_tail = (log_rho.exp() - 1.0 - log_rho).mean(dim=-1)
    r = tail.exp()
    return top + torch.where(r > 0, r * (tail - model_tail + within_tail), 0.0)


def save_reference(path: Path, reference: CompactReference, key: str, metadata: dict[str, str] | None = None) -> None:
    """Write ``reference`` to ``path`` (safetensors), atomically, under ``key``. ``metadata`` (strings) is kept
    with it, e.g. the reference's own quality figures, and comes back from ``load_reference``."""
    from safetensors.torch import save

    from ..atomic import atomic_write

    tensors = _tensors(reference)
    header = {
        "format": FORMAT,
        "key": key,
        "vocab_size": str(reference.vocab_size),
        "top_k": EXACT if reference.top_k is None else str(reference.top_k),
        "metadata": json.dumps(metadata or {}, sort_keys=True),
    }
    atomic_write(Path(path), save({name: t.contiguous() for name, t in tensors.items()}, metadata=header))


def load_reference(path: Path, key: str) -> tuple[CompactReference, dict[str, str]] | None:
    """The reference saved at ``path`` under ``key`` and its metadata; None if there is none, it was saved
    under another key or in another format, or it cannot be read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        if header.get("format") != FORMAT or header.get("key") != key:
            return None
        tensors = load_file(str(path))
        top_k = None if header["top_k"] == EXACT else int(header["top_k"])
        reference = CompactReference(
            vocab_size=int(header["vocab_size"]),
            top_k=top_k,
            logprob_target=tensors["logprob_target"],
            argmax=tensors["argmax"],
            topk_logprobs=tensors["topk_logprobs"],
            topk_indices=tensors.get("topk_indices"),
            tail_logmass=tensors["tail_logmass"],
            tail_sample_indices=tensors.get("tail_sample_indices"),
            tail_sample_logprobs=tensors.get("tail_sample_logprobs"),
        )
        if not _consistent(reference):
            return None
        return reference, json.loads(header.get("metadata", "{}"))
    except (SafetensorError, OSError, KeyError, ValueError):
        return None


def _consistent(reference: CompactReference) -> bool:
    """Whether the arrays of a loaded reference fit together (shapes, dtypes, index ranges), so that a torn
    or edited file is measured again rather than misread (or indexed out of range)."""
    import torch

    tokens, vocab, k = reference.tokens_scored, reference.vocab_size, reference.top_k
    if reference.logprob_target.shape != (tokens,) or reference.argmax.shape != (tokens,):
        return False
    if reference.tail_logmass.shape != (tokens,):
        return False
    if k is None:
        return reference.topk_logprobs.shape == (tokens, vocab) and reference.topk_indices is None
    arrays = (reference.topk_logprobs, reference.topk_indices, reference.tail_sample_indices,
              reference.tail_sample_logprobs)
    if any(a is None or a.shape != (tokens, k) for a in arrays) or k >= vocab:
        return False
    indices = (reference.topk_indices, reference.tail_sample_indices)
    if any(i.dtype != torch.int32 or (i.numel() and (int(i.min()) < 0 or int(i.max()) >= vocab)) for i in indices):
        return False
    return True
