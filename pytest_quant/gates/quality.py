"""The quality markers' pure checks: perplexity_delta, kl_divergence (with confidence=: one-sided bounds from
the standard errors of ``measure.stats``) and generation_agreement."""

from __future__ import annotations

import math

from ..measure.stats import wilson_lower_bound
from ..metrics import Measurements, delta_perplexity
from .bounds import judge
from .limits import Limits, Violation

DEFAULT_GENERATION_TOKENS = 32
# keywords whose limit confidence= applies to; percentiles have no standard error and are compared as measured
CONFIDENCE_KEYWORDS = {"perplexity_delta": ("max", "max_rel"), "kl_divergence": ("max_mean", "max_rms_delta_p", "min_top1"),
                       "task_accuracy": ("max_drop", "min_accuracy")}


def check_perplexity(m: Measurements, limits: Limits) -> list[Violation]:
    """With confidence=: max is judged by the paired SE of PPL(Q) - PPL(base), max_rel in ln(PPL(Q)/PPL(base))."""
    out, st, conf = [], m.stats, limits.options.get("confidence")
    ppl, ref = m.quality.perplexity, m.reference.quality.perplexity
    delta = delta_perplexity(m)
    n = m.quality.tokens_scored
    limit = limits.values.get("max")
    se = st.perplexity_difference_se if conf is not None else None
    verdict = limit is not None and judge(delta, limit, confidence=conf, se=se, tokens=n)
    if verdict:
        pm = f"±{se:.3g}" if se is not None else ""
        out.append(Violation("perplexity_delta", f"perplexity {ppl:.3f} is {delta:+.3f}{pm} over reference {ref:.3f}, "
                             f"above max {limit:g}{verdict.wording(lambda v: f'{v:+.3f}')} {m.where}", delta, limit,
                             "perplexity"))
    rel = limits.values.get("max_rel")
    if rel is not None and conf is None and not delta / ref <= rel:  # NaN never passes
        out.append(Violation("perplexity_delta", f"perplexity {ppl:.3f} is {100 * delta / ref:+.2f}% over reference "
                             f"{ref:.3f}, above max_rel {100 * rel:g}% {m.where}", delta / ref, rel, "fraction"))
    elif rel is not None and conf is not None:
        verdict = judge(st.ln_perplexity_ratio, math.log1p(rel), confidence=conf, se=st.ln_perplexity_ratio_se, tokens=n)
        if verdict:
            out.append(Violation("perplexity_delta", f"perplexity {ppl:.3f} is {100 * math.expm1(st.ln_perplexity_ratio):+.2f}% "
                                 f"(ln ratio {st.ln_perplexity_ratio:.5f}±{st.ln_perplexity_ratio_se:.2g}) over reference "
                                 f"{ref:.3f}, above max_rel {100 * rel:g}%"
                                 f"{verdict.wording(lambda v: f'{100 * math.expm1(v):+.2f}%')} {m.where}",
                                 math.expm1(st.ln_perplexity_ratio), rel, "fraction"))
    return out


def check_kl(m: Measurements, limits: Limits) -> list[Violation]:
    q, st, conf = m.quality, m.stats, limits.options.get("confidence")
    out = []
    n = q.tokens_scored
    ceilings = (("max_mean", "mean KL", lambda: (q.mean_kl_nats, st.mean_kl_se_nats if conf is not None else None), "nats"),
                ("max_p99", "99th percentile KL", lambda: (q.p99_kl_nats, None), "nats"),
                ("max_p999", "99.9th percentile KL", lambda: (st.p999_kl_nats, None), "nats"),
                ("max_rms_delta_p", "RMS Δp", lambda: (st.rms_delta_p_percent, st.rms_delta_p_se_percent
                                                          if conf is not None else None), "percent"))
    for key, label, read, unit in ceilings:
        limit = limits.values.get(key)
        if limit is None:
            continue
        value, se = read()
        verdict = judge(value, limit, confidence=conf if se is not None else None, se=se, tokens=n)
        if verdict:
            suffix = " nats" if unit == "nats" else " points"
            pm = f"±{se:.2g}" if se is not None else ""
            out.append(Violation("kl_divergence", f"{label} {value:.5f}{pm}{suffix} exceeds {key} {limit:g}{suffix}"
                                 f"{verdict.wording(lambda v: f'{v:.5f}')} {m.where}", value, limit, unit))
    floor = limits.values.get("min_top1")
    top1 = q.top1_agreement_percent
    se = st.top1_agreement_se_percent if conf is not None else None
    wilson = 100 * wilson_lower_bound(st.top1_agreements, n, conf) if conf is not None else None
    verdict = floor is not None and judge(top1, floor, lower=True, confidence=conf, se=se, tokens=n, bound=wilson)
    if verdict:
        pm = f"±{se:.2g}" if se is not None else ""
        out.append(Violation("kl_divergence", f"top-1 agreement {top1:.2f}{pm}% below min_top1 {floor:g}%"
                             f"{verdict.wording(lambda v: f'{v:.2f}% (Wilson)')} {m.where}", top1, floor, "percent"))
    return out


def check_generation(m: Measurements, limits: Limits) -> list[Violation]:
    g = m.generation_at(limits.options.get("tokens", DEFAULT_GENERATION_TOKENS))
    out = []
    for key, value, what in (("min_exact_percent", g.exact_match_percent, "% of greedy generations equal the reference's"),
                             ("min_prefix_tokens", g.mean_prefix_tokens, " tokens before the first divergence, on average")):
        floor = limits.values.get(key)
        if floor is not None and not value >= floor:
            out.append(Violation("generation_agreement", f"{value:.2f}{what} (first {g.tokens_compared} tokens of "
                                 f"{g.prompts} prompts), below {key} {floor:g} {m.where}", value, floor,
                                 "percent" if key == "min_exact_percent" else "tokens"))
    return out
