"""gates.quality: perplexity_delta, kl_divergence and generation_agreement just above and just below the figure,
with confidence=: a bound that fails where the point passes is inconclusive and says how many tokens would decide."""

from __future__ import annotations

import math
from statistics import NormalDist

from pytest_quant import gates

Z = NormalDist().inv_cdf(0.95)


def verdict(marker: str, m, **kwargs) -> list[str]:
    return [v.reason for v in gates.check(gates.parse(gates.MARKERS[marker], (), kwargs), m)]


def between(a: float, b: float) -> float:
    return (a + b) / 2


def test_perplexity_delta_max_and_max_rel(pair) -> None:
    delta = pair.quality.perplexity - pair.reference.quality.perplexity
    rel = delta / pair.reference.quality.perplexity
    assert delta > 0
    assert verdict("perplexity_delta", pair, max=delta + 1e-6) == []
    (reason,) = verdict("perplexity_delta", pair, max=delta - 1e-6)
    assert f"is {delta:+.3f} over reference" in reason and reason.endswith("[tiny, bnb-nf4, cpu]")
    assert verdict("perplexity_delta", pair, max_rel=rel * 1.001) == []
    (reason,) = verdict("perplexity_delta", pair, max_rel=rel * 0.999)
    assert f"{100 * rel:+.2f}% over reference" in reason and "above max_rel" in reason


def test_perplexity_delta_with_confidence_is_inconclusive_between_point_and_bound(pair) -> None:
    st = pair.stats
    delta = pair.quality.perplexity - pair.reference.quality.perplexity
    upper = delta + Z * st.perplexity_difference_se
    assert verdict("perplexity_delta", pair, max=upper * 1.01, confidence=0.95) == []
    (reason,) = verdict("perplexity_delta", pair, max=between(delta, upper), confidence=0.95)
    assert "only its 95% upper bound" in reason and "inconclusive at 512 tokens; about" in reason
    rel_upper = math.expm1(st.ln_perplexity_ratio + Z * st.ln_perplexity_ratio_se)
    assert verdict("perplexity_delta", pair, max_rel=rel_upper * 1.01, confidence=0.95) == []
    (reason,) = verdict("perplexity_delta", pair, max_rel=math.expm1(st.ln_perplexity_ratio) * 0.99, confidence=0.95)
    assert "(the point estimate itself; 95% upper bound" in reason


def test_kl_divergence_every_limit_just_above_and_just_below(pair) -> None:
    q, st = pair.quality, pair.stats
    for key, value in (("max_mean", q.mean_kl_nats), ("max_p99", q.p99_kl_nats), ("max_p999", st.p999_kl_nats),
                       ("max_rms_delta_p", st.rms_delta_p_percent)):
        assert verdict("kl_divergence", pair, **{key: value * 1.001}) == [], key
        (reason,) = verdict("kl_divergence", pair, **{key: value * 0.999})
        assert f"exceeds {key}" in reason and reason.endswith("[tiny, bnb-nf4, cpu]"), reason
    assert verdict("kl_divergence", pair, min_top1=q.top1_agreement_percent - 0.01) == []
    (reason,) = verdict("kl_divergence", pair, min_top1=q.top1_agreement_percent + 0.01)
    assert reason.startswith(f"top-1 agreement {q.top1_agreement_percent:.2f}% below min_top1")


def test_kl_divergence_with_confidence_uses_the_se_and_the_wilson_bound(pair) -> None:
    q, st = pair.quality, pair.stats
    upper = q.mean_kl_nats + Z * st.mean_kl_se_nats
    assert verdict("kl_divergence", pair, max_mean=upper * 1.01, confidence=0.95) == []
    (reason,) = verdict("kl_divergence", pair, max_mean=between(q.mean_kl_nats, upper), confidence=0.95)
    assert "nats: only its 95% upper bound" in reason and "about" in reason and "tokens would decide" in reason
    n, p = q.tokens_scored, q.top1_agreement_percent / 100
    wilson = 100 * (p + Z * Z / (2 * n) - Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))) / (1 + Z * Z / n)
    assert verdict("kl_divergence", pair, min_top1=wilson - 0.05, confidence=0.95) == []
    (reason,) = verdict("kl_divergence", pair, min_top1=between(100 * p, wilson), confidence=0.95)
    assert "% (Wilson) does: inconclusive at 512 tokens" in reason


def test_generation_agreement_just_above_and_just_below(pair) -> None:
    g = pair.generation
    assert verdict("generation_agreement", pair, min_exact_percent=g.exact_match_percent - 1, tokens=8) == []
    (reason,) = verdict("generation_agreement", pair, min_exact_percent=g.exact_match_percent + 1, tokens=8)
    assert reason.startswith("62.50% of greedy generations equal the reference's (first 8 tokens of 8 prompts)")
    assert verdict("generation_agreement", pair, min_prefix_tokens=g.mean_prefix_tokens - 0.01, tokens=8) == []
    (reason,) = verdict("generation_agreement", pair, min_prefix_tokens=g.mean_prefix_tokens + 0.01, tokens=8)
    assert "5.50 tokens before the first divergence, on average" in reason


def test_a_non_finite_figure_never_passes(pair) -> None:
    import dataclasses

    broken = dataclasses.replace(pair, quality=dataclasses.replace(pair.quality, mean_kl_nats=math.nan))
    assert verdict("kl_divergence", broken, max_mean=1.0) != []
