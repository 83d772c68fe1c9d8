"""llama.cpp's ``perplexity --kl-divergence`` statistics from per-token arrays, and one-sided confidence bounds.

The formulas are those of ``kl_divergence()`` in llama.cpp's tools/perplexity/perplexity.cpp: a mean's
standard error is ``sqrt((E[x^2] - E[x]^2) / (n - 1))`` (the sample standard deviation over sqrt(n)), the
paired log-likelihoods' covariance enters ln(PPL(Q)/PPL(base)) and PPL(Q)-PPL(base), and errors are carried
through exp() and sqrt() to first order. Two deliberate differences: llama.cpp reports a standard error of 0 below 11 tokens
(and a covariance of 0 below 10), here it is computed from n >= 2 and is nan below; and percentiles are
numpy's default linear interpolation in float64 (llama.cpp interpolates the same way, in float32).
Pure functions: numpy is imported inside them and nothing here knows about pytest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

# Percentiles reported for KL and for delta-p, as (field suffix, percent): llama.cpp's set. delta-p also has
# the quartiles, as llama.cpp prints them.
KL_PERCENTILES = (("p999", 99.9), ("p99", 99.0), ("p95", 95.0), ("p90", 90.0), ("median", 50.0),
                  ("p10", 10.0), ("p5", 5.0), ("p1", 1.0), ("p01", 0.1))
DELTA_P_PERCENTILES = (("p999", 99.9), ("p99", 99.0), ("p95", 95.0), ("p90", 90.0), ("p75", 75.0),
                       ("median", 50.0), ("p25", 25.0), ("p10", 10.0), ("p5", 5.0), ("p1", 1.0), ("p01", 0.1))


@dataclass(frozen=True)
class QualityStats:
    """Quantized model (Q) against its reference (base) over the same scored tokens.

    ``_se`` fields are standard errors in the unit of their figure. delta-p is the probability of the correct
    token, quantized minus reference, in percentage points. Perplexities are unitless.
    """

    tokens_scored: int
    # perplexity
    nll_nats_per_token: float
    nll_se_nats_per_token: float
    perplexity: float
    perplexity_se: float
    reference_nll_nats_per_token: float
    reference_perplexity: float
    reference_perplexity_se: float
    ln_perplexity_correlation: float  # Cor(ln PPL(Q), ln PPL(base)) of the paired per-token log-likelihoods
    ln_perplexity_ratio: float  # ln(PPL(Q)/PPL(base)) = mean NLL(Q) - mean NLL(base)
    ln_perplexity_ratio_se: float
    perplexity_ratio: float
    perplexity_ratio_se: float
    perplexity_difference: float
    perplexity_difference_se: float
    # KL(reference || quantized), nats per token
    mean_kl_nats: float
    mean_kl_se_nats: float
    max_kl_nats: float
    p999_kl_nats: float
    p99_kl_nats: float
    p95_kl_nats: float
    p90_kl_nats: float
    median_kl_nats: float
    p10_kl_nats: float
    p5_kl_nats: float
    p1_kl_nats: float
    p01_kl_nats: float
    min_kl_nats: float
    # delta-p, percentage points
    mean_delta_p_percent: float
    mean_delta_p_se_percent: float
    rms_delta_p_percent: float
    rms_delta_p_se_percent: float
    max_delta_p_percent: float
    p999_delta_p_percent: float
    p99_delta_p_percent: float
    p95_delta_p_percent: float
    p90_delta_p_percent: float
    p75_delta_p_percent: float
    median_delta_p_percent: float
    p25_delta_p_percent: float
    p10_delta_p_percent: float
    p5_delta_p_percent: float
    p1_delta_p_percent: float
    p01_delta_p_percent: float
    min_delta_p_percent: float
    # same top token
    top1_agreements: int
    top1_agreement_percent: float
    top1_agreement_se_percent: float


def mean_and_se(values) -> tuple[float, float]:
    """Mean and its standard error; nan SE below 2 values."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    n = x.size
    mean = float(x.mean())
    # SE = sqrt((E[x^2] - E[x]^2) / (n - 1)), llama.cpp's mean_and_uncertainty (centred first for accuracy)
    variance = float(np.mean((x - mean) ** 2))
    return mean, (math.sqrt(variance / (n - 1)) if n >= 2 else math.nan)


def mean_covariance(a, b) -> float:
    """Covariance of the means of two paired samples; nan below 2 pairs."""
    import numpy as np

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    n = x.size
    if n < 2:
        return math.nan
    # Cov(mean a, mean b) = (E[ab] - E[a]E[b]) / (n - 1), llama.cpp's covariance()
    return float(np.mean((x - x.mean()) * (y - y.mean()))) / (n - 1)


def percentile(values, percent: float) -> float:
    """numpy's default (linear interpolation between closest ranks)."""
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), percent))


def quality_stats(logprob_target, reference_logprob_target, kl_nats, top1_match) -> QualityStats:
    """All statistics from four equally long per-scored-token arrays (any array-likes; tensors must be on CPU).

    ``logprob_target``/``reference_logprob_target``: log-probability of the correct next token under the
    quantized model / the reference; ``kl_nats``: KL(reference || quantized) per token; ``top1_match``: whether
    the two argmaxes agree.
    """
    import numpy as np

    logprob = _array(logprob_target, "logprob_target", np.float64)
    reference = _array(reference_logprob_target, "reference_logprob_target", np.float64)
    kl = _array(kl_nats, "kl_nats", np.float64)
    same_top = _array(top1_match, "top1_match", bool)
    n = logprob.size
    lengths = {a.size for a in (logprob, reference, kl, same_top)}
    if len(lengths) != 1 or n == 0:
        raise ValueError(
            "per-token arrays must be non-empty and equally long; got "
            f"{logprob.size}, {reference.size}, {kl.size}, {same_top.size}"
        )

    nll, nll_se = mean_and_se(-logprob)
    reference_nll, reference_nll_se = mean_and_se(-reference)
    ppl, reference_ppl = math.exp(nll), math.exp(reference_nll)
    # SE(exp(x)) = exp(x) * SE(x), first order
    ppl_se, reference_ppl_se = ppl * nll_se, reference_ppl * reference_nll_se
    covariance = mean_covariance(logprob, reference)
    # Cor = Cov / (SE_Q * SE_base)
    correlation = covariance / (nll_se * reference_nll_se) if nll_se and reference_nll_se else math.nan
    ln_ratio = nll - reference_nll
    # llama.cpp's sqrt(SE_Q^2 + SE_base^2 - 2 Cov) is exactly the SE of the paired differences, computed so
    # without the cancellation that leaves ~1e-9 where the models agree
    ln_ratio_se = mean_and_se(reference - logprob)[1]
    ratio = math.exp(ln_ratio)
    # sqrt(PPL_se^2 + PPL_base_se^2 - 2 PPL PPL_base Cov) = SE of (PPL nll_Q - PPL_base nll_base), the same way
    difference_se = mean_and_se(reference_ppl * reference - ppl * logprob)[1]

    mean_kl, mean_kl_se = mean_and_se(kl)
    delta_p = np.exp(logprob) - np.exp(reference)
    mean_delta_p, mean_delta_p_se = mean_and_se(delta_p)
    mean_square, mean_square_se = mean_and_se(delta_p**2)
    rms = math.sqrt(mean_square)
    # SE(sqrt(m)) = SE(m) / (2 sqrt(m)), first order
    rms_se = 0.5 / rms * mean_square_se if rms > 0 else 0.0

    agreements = int(same_top.sum())
    share = agreements / n
    # binomial SE = sqrt(p (1 - p) / (n - 1)), as llama.cpp prints it
    share_se = math.sqrt(share * (1.0 - share) / (n - 1)) if n >= 2 else math.nan

    kl_sorted, delta_p_sorted = np.sort(kl), np.sort(delta_p)
    kl_percentiles = {f"{name}_kl_nats": percentile(kl_sorted, q) for name, q in KL_PERCENTILES}
    delta_p_percentiles = {
        f"{name}_delta_p_percent": 100.0 * float(np.percentile(delta_p_sorted, q)) for name, q in DELTA_P_PERCENTILES
    }
    return QualityStats(
        tokens_scored=n,
        nll_nats_per_token=nll,
        nll_se_nats_per_token=nll_se,
        perplexity=ppl,
        perplexity_se=ppl_se,
        reference_nll_nats_per_token=reference_nll,
        reference_perplexity=reference_ppl,
        reference_perplexity_se=reference_ppl_se,
        ln_perplexity_correlation=correlation,
        ln_perplexity_ratio=ln_ratio,
        ln_perplexity_ratio_se=ln_ratio_se,
        perplexity_ratio=ratio,
        perplexity_ratio_se=ratio * ln_ratio_se,  # SE(exp(x)) = exp(x) SE(x)
        perplexity_difference=ppl - reference_ppl,
        perplexity_difference_se=difference_se,
        mean_kl_nats=mean_kl,
        mean_kl_se_nats=mean_kl_se,
        max_kl_nats=float(kl_sorted[-1]),
        min_kl_nats=float(kl_sorted[0]),
        **kl_percentiles,
        mean_delta_p_percent=100.0 * mean_delta_p,
        mean_delta_p_se_percent=100.0 * mean_delta_p_se,
        rms_delta_p_percent=100.0 * rms,
        rms_delta_p_se_percent=100.0 * rms_se,
        max_delta_p_percent=100.0 * float(delta_p_sorted[-1]),
        min_delta_p_percent=100.0 * float(delta_p_sorted[0]),
        **delta_p_percentiles,
        top1_agreements=agreements,
        top1_agreement_percent=100.0 * share,
        top1_agreement_se_percent=100.0 * share_se,
    )


def z_score(confidence: float) -> float:
    """The standard normal quantile of a one-sided ``confidence`` (0.95 -> 1.6449)."""
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    return NormalDist().inv_cdf(confidence)


def upper_bound(mean: float, se: float, confidence: float) -> float:
    """One-sided upper confidence bound of a mean."""
    # upper = mean + z(confidence) * SE
    return mean + z_score(confidence) * se


def lower_bound(mean: float, se: float, confidence: float) -> float:
    """One-sided lower confidence bound of a mean."""
    # lower = mean - z(confidence) * SE
    return mean - z_score(confidence) * se


def wilson_lower_bound(successes: int, n: int, confidence: float) -> float:
    """One-sided Wilson score lower bound of a proportion, as a fraction in [0, 1]."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got successes={successes}, n={n}")
    z = z_score(confidence)
    p = successes / n
    # (p + z^2/2n - z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def tokens_to_decide(point: float, se: float, n: int, limit: float, confidence: float, *, lower: bool = False):
    """About how many tokens would make the one-sided bound clear ``limit``; None when the point breaks it.

    The bound is upper (``point + z SE <= limit`` passes) unless ``lower`` (``point - z SE >= limit``, as for
    top-1 agreement). The standard error is assumed to scale as 1/sqrt(tokens). A point exactly at the limit
    is never decided, so it gives None too.
    """
    margin = (point - limit) if lower else (limit - point)
    if not margin > 0:
        return None
    if not se > 0:
        return n
    # z SE sqrt(n / m) = margin  =>  m = n (z SE / margin)^2
    return max(1, math.ceil(n * (z_score(confidence) * se / margin) ** 2))


def _array(values, name: str, dtype):
    import numpy as np

    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    array = np.asarray(values).reshape(-1).astype(dtype)
    if dtype is not bool and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds non-finite values")
    return array
