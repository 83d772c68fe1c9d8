"""pytest_quant.measure.stats against hand and numpy computations of the same formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_quant.measure.stats import (
    QualityStats,
    lower_bound,
    mean_and_se,
    mean_covariance,
    quality_stats,
    tokens_to_decide,
    upper_bound,
    wilson_lower_bound,
    z_score,
)


def synthetic(n: int = 5000, seed: int = 0):
    """Paired per-token arrays shaped like a real evaluation: correlated log-likelihoods, skewed KL."""
    rng = np.random.default_rng(seed)
    reference = -rng.gamma(2.0, 1.5, n)
    logprob = reference - np.abs(rng.normal(0.0, 0.05, n)) + rng.normal(0.0, 0.02, n)
    logprob = np.minimum(logprob, 0.0)
    kl = rng.gamma(0.5, 0.02, n)
    top1 = rng.random(n) < 0.93
    return logprob, reference, kl, top1


def test_mean_and_se_by_hand():
    mean, se = mean_and_se([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    # sample variance 5/3, SE = sqrt(5/3 / 4)
    assert se == pytest.approx(math.sqrt(5 / 3 / 4), rel=1e-12)


def test_mean_and_se_is_llama_cpps_sum_formula():
    x = synthetic()[2]
    n = x.size
    f = x.sum() / n
    llama = math.sqrt((np.sum(x * x) / n - f * f) / (n - 1))
    assert mean_and_se(x)[1] == pytest.approx(llama, rel=1e-9)


def test_mean_and_se_of_one_value_is_nan():
    assert math.isnan(mean_and_se([3.0])[1])


def test_mean_covariance_is_numpys_over_n():
    a, b = synthetic()[:2]
    assert mean_covariance(a, b) == pytest.approx(np.cov(a, b)[0, 1] / a.size, rel=1e-12)


def test_quality_stats_against_numpy():
    logprob, reference, kl, top1 = synthetic()
    n = logprob.size
    stats = quality_stats(logprob, reference, kl, top1)

    nll, ref_nll = -logprob.mean(), -reference.mean()
    se = np.std(logprob, ddof=1) / math.sqrt(n)
    ref_se = np.std(reference, ddof=1) / math.sqrt(n)
    cov = np.cov(logprob, reference)[0, 1] / n
    assert stats.tokens_scored == n
    assert stats.nll_nats_per_token == pytest.approx(nll, rel=1e-12)
    assert stats.nll_se_nats_per_token == pytest.approx(se, rel=1e-9)
    assert stats.perplexity == pytest.approx(math.exp(nll), rel=1e-12)
    assert stats.perplexity_se == pytest.approx(math.exp(nll) * se, rel=1e-9)
    assert stats.reference_perplexity == pytest.approx(math.exp(ref_nll), rel=1e-12)
    assert stats.reference_perplexity_se == pytest.approx(math.exp(ref_nll) * ref_se, rel=1e-9)
    assert stats.ln_perplexity_correlation == pytest.approx(np.corrcoef(logprob, reference)[0, 1], rel=1e-9)
    # the SE of a mean paired difference is the SE of the per-token differences
    difference = logprob - reference
    assert stats.ln_perplexity_ratio == pytest.approx(nll - ref_nll, rel=1e-9)
    assert stats.ln_perplexity_ratio_se == pytest.approx(np.std(difference, ddof=1) / math.sqrt(n), rel=1e-6)
    assert stats.ln_perplexity_ratio_se < math.sqrt(se**2 + ref_se**2) / 10  # the correlation matters
    ratio = math.exp(nll - ref_nll)
    assert stats.perplexity_ratio == pytest.approx(ratio, rel=1e-12)
    assert stats.perplexity_ratio_se == pytest.approx(ratio * stats.ln_perplexity_ratio_se, rel=1e-12)
    ppl, ref_ppl = math.exp(nll), math.exp(ref_nll)
    assert stats.perplexity_difference == pytest.approx(ppl - ref_ppl, rel=1e-9)
    expected = math.sqrt((ppl * se) ** 2 + (ref_ppl * ref_se) ** 2 - 2 * ppl * ref_ppl * cov)
    assert stats.perplexity_difference_se == pytest.approx(expected, rel=1e-9)

    assert stats.mean_kl_nats == pytest.approx(kl.mean(), rel=1e-12)
    assert stats.mean_kl_se_nats == pytest.approx(np.std(kl, ddof=1) / math.sqrt(n), rel=1e-9)
    assert stats.max_kl_nats == kl.max() and stats.min_kl_nats == kl.min()
    for name, q in [("p999", 99.9), ("p99", 99), ("p95", 95), ("p90", 90), ("median", 50), ("p10", 10),
                    ("p5", 5), ("p1", 1), ("p01", 0.1)]:
        assert getattr(stats, f"{name}_kl_nats") == pytest.approx(np.percentile(kl, q), rel=1e-12), name

    delta_p = np.exp(logprob) - np.exp(reference)
    assert stats.mean_delta_p_percent == pytest.approx(100 * delta_p.mean(), rel=1e-9)
    assert stats.mean_delta_p_se_percent == pytest.approx(100 * np.std(delta_p, ddof=1) / math.sqrt(n), rel=1e-9)
    rms = math.sqrt(np.mean(delta_p**2))
    assert stats.rms_delta_p_percent == pytest.approx(100 * rms, rel=1e-12)
    mse_se = np.std(delta_p**2, ddof=1) / math.sqrt(n)
    assert stats.rms_delta_p_se_percent == pytest.approx(100 * mse_se / (2 * rms), rel=1e-9)
    assert stats.max_delta_p_percent == pytest.approx(100 * delta_p.max(), rel=1e-12)
    assert stats.min_delta_p_percent == pytest.approx(100 * delta_p.min(), rel=1e-12)
    for name, q in [("p999", 99.9), ("p99", 99), ("p95", 95), ("p90", 90), ("p75", 75), ("median", 50),
                    ("p25", 25), ("p10", 10), ("p5", 5), ("p1", 1), ("p01", 0.1)]:
        assert getattr(stats, f"{name}_delta_p_percent") == pytest.approx(
            100 * np.percentile(delta_p, q), rel=1e-9, abs=1e-12
        ), name

    p = top1.mean()
    assert stats.top1_agreements == int(top1.sum())
    assert stats.top1_agreement_percent == pytest.approx(100 * p, rel=1e-12)
    assert stats.top1_agreement_se_percent == pytest.approx(100 * math.sqrt(p * (1 - p) / (n - 1)), rel=1e-12)


def test_quality_stats_small_hand_example():
    # Q: nll 1, 2, 3, 2; base: nll 1, 1, 2, 2 -> ln ratio = 2 - 1.5 = 0.5
    stats = quality_stats([-1.0, -2.0, -3.0, -2.0], [-1.0, -1.0, -2.0, -2.0], [0.0, 0.1, 0.2, 0.3],
                          [True, False, True, True])
    assert stats.ln_perplexity_ratio == pytest.approx(0.5)
    # paired differences 0, 1, 1, 0: sample variance 1/3, SE = sqrt(1/3 / 4)
    assert stats.ln_perplexity_ratio_se == pytest.approx(math.sqrt(1 / 12))
    assert stats.perplexity == pytest.approx(math.e**2)
    assert stats.median_kl_nats == pytest.approx(0.15)
    assert stats.top1_agreement_percent == 75.0
    assert stats.top1_agreement_se_percent == pytest.approx(100 * math.sqrt(0.75 * 0.25 / 3))


def test_identical_models_give_no_difference():
    logprob, _, _, _ = synthetic(1000)
    n = logprob.size
    stats = quality_stats(logprob, logprob, np.zeros(n), np.ones(n, dtype=bool))
    assert stats.ln_perplexity_ratio == 0.0 and stats.ln_perplexity_ratio_se == 0.0
    assert stats.perplexity_ratio == 1.0 and stats.perplexity_difference_se == 0.0
    assert stats.rms_delta_p_percent == 0.0 and stats.rms_delta_p_se_percent == 0.0
    assert stats.top1_agreement_percent == 100.0 and stats.top1_agreement_se_percent == 0.0
    assert stats.ln_perplexity_correlation == pytest.approx(1.0)


def test_quality_stats_accepts_tensors():
    torch = pytest.importorskip("torch")
    arrays = synthetic(500)
    from_numpy = quality_stats(*arrays)
    from_torch = quality_stats(*(torch.from_numpy(a) for a in arrays))
    assert from_torch == from_numpy
    assert isinstance(from_torch, QualityStats)


@pytest.mark.parametrize(
    "arrays, message",
    [
        (([-1.0, -2.0], [-1.0], [0.0, 0.0], [True, True]), "equally long"),
        (([], [], [], []), "non-empty"),
        (([-1.0, float("nan")], [-1.0, -1.0], [0.0, 0.0], [True, True]), "logprob_target holds non-finite"),
        (([-1.0, -1.0], [-1.0, -1.0], [0.0, float("inf")], [True, True]), "kl_nats holds non-finite"),
    ],
)
def test_quality_stats_rejects_bad_arrays(arrays, message):
    with pytest.raises(ValueError, match=message):
        quality_stats(*arrays)


def test_stats_are_frozen():
    stats = quality_stats(*synthetic(100))
    with pytest.raises(AttributeError):
        stats.perplexity = 1.0


def test_z_score():
    assert z_score(0.95) == pytest.approx(1.6448536, rel=1e-6)
    assert z_score(0.5) == 0.0
    for bad in (0.4, 1.0, 1.5):
        with pytest.raises(ValueError, match="confidence"):
            z_score(bad)


def test_bounds():
    assert upper_bound(1.0, 0.1, 0.95) == pytest.approx(1.16448536, rel=1e-8)
    assert lower_bound(1.0, 0.1, 0.95) == pytest.approx(0.83551464, rel=1e-8)
    assert upper_bound(2.0, 0.0, 0.99) == 2.0


def test_wilson_lower_bound_known_value():
    # two-sided 95% Wilson interval of 90/100 is (0.8256, 0.9448): its lower end is the one-sided 97.5% bound
    assert wilson_lower_bound(90, 100, 0.975) == pytest.approx(0.82564, abs=5e-5)


def test_wilson_lower_bound_formula():
    z, n, k = z_score(0.95), 8192, 7600
    p = k / n
    expected = (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    assert wilson_lower_bound(k, n, 0.95) == pytest.approx(expected, rel=1e-12)
    assert wilson_lower_bound(k, n, 0.95) < p


def test_wilson_lower_bound_edges():
    assert wilson_lower_bound(0, 50, 0.95) == 0.0
    all_agree = wilson_lower_bound(50, 50, 0.95)
    assert 0.9 < all_agree < 1.0
    # more evidence, tighter bound
    assert wilson_lower_bound(500, 500, 0.95) > all_agree
    for successes, n in ((5, 4), (-1, 4), (0, 0)):
        with pytest.raises(ValueError):
            wilson_lower_bound(successes, n, 0.95)


def test_tokens_to_decide_upper():
    needed = tokens_to_decide(0.01, 0.005, 1000, 0.02, 0.95)
    assert needed == math.ceil(1000 * (z_score(0.95) * 0.005 / 0.01) ** 2)
    # with that many tokens (SE shrinking as 1/sqrt(n)) the bound clears the limit, with one fewer it does not
    assert upper_bound(0.01, 0.005 * math.sqrt(1000 / needed), 0.95) <= 0.02
    assert upper_bound(0.01, 0.005 * math.sqrt(1000 / (needed - 1)), 0.95) > 0.02


def test_tokens_to_decide_needs_more_tokens_when_inconclusive():
    point, se, n, limit = 0.018, 0.002, 8192, 0.02
    assert upper_bound(point, se, 0.95) > limit  # inconclusive now
    assert tokens_to_decide(point, se, n, limit, 0.95) > n


def test_tokens_to_decide_lower():
    needed = tokens_to_decide(92.0, 0.5, 4096, 91.0, 0.95, lower=True)
    assert needed == math.ceil(4096 * (z_score(0.95) * 0.5 / 1.0) ** 2)
    assert lower_bound(92.0, 0.5 * math.sqrt(4096 / needed), 0.95) >= 91.0


@pytest.mark.parametrize("point, limit, lower", [(0.03, 0.02, False), (0.02, 0.02, False), (90.0, 91.0, True)])
def test_tokens_to_decide_is_none_when_the_point_breaks_the_limit(point, limit, lower):
    assert tokens_to_decide(point, 0.001, 1000, limit, 0.95, lower=lower) is None


def test_tokens_to_decide_without_spread():
    assert tokens_to_decide(0.01, 0.0, 1000, 0.02, 0.95) == 1000


def test_importing_the_new_modules_imports_neither_torch_nor_numpy():
    import subprocess
    import sys

    code = (
        "import sys, pytest_quant.measure.stats, pytest_quant.measure.generation, pytest_quant.prompts; "
        "print(sorted(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
