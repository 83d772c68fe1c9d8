"""Constructed figures for the pure checks: a quantized model's Measurements beside its reference's, built from
per-token arrays through the same statistics the plugin uses, without any model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_quant.measure.generation import GenerationAgreement
from pytest_quant.measure.quality import QualityMeasurement
from pytest_quant.measure.stats import quality_stats
from pytest_quant.measure.throughput import ThroughputMeasurement
from pytest_quant.measure.vram import VramMeasurement
from pytest_quant.metrics import Measurements

TOKENS = 512


def _quality(logprobs, kl=None, top1=None) -> QualityMeasurement:
    nll = -float(np.mean(logprobs))
    return QualityMeasurement(perplexity=math.exp(nll), nll_nats_per_token=nll, tokens_scored=len(logprobs), windows=1,
                              context_tokens=512, stride_tokens=512,
                              mean_kl_nats=None if kl is None else float(np.mean(kl)),
                              p99_kl_nats=None if kl is None else float(np.percentile(kl, 99)),
                              top1_agreement_percent=None if top1 is None else 100.0 * float(np.mean(top1)), seconds=1.0)


def _throughput(tps: float) -> ThroughputMeasurement:
    return ThroughputMeasurement(prefill_tokens_per_s=10 * tps, decode_tokens_per_s=tps,
                                 decode_tokens_per_s_per_sequence=tps, prefill_spread_percent=1.0,
                                 decode_spread_percent=1.0, decode_cv_percent=0.5, prompt_tokens=128, decode_tokens=32,
                                 repeats=3, warmup_runs=1)


@pytest.fixture(scope="session")
def pair() -> Measurements:
    """A quantized model and its reference: 512 tokens, a known spread of KL and of the target's log-probability."""
    rng = np.random.default_rng(0)
    ref_lp = np.log(rng.uniform(0.05, 0.9, TOKENS))
    lp = ref_lp - np.abs(rng.normal(0, 0.08, TOKENS))
    kl = rng.gamma(2.0, 0.005, TOKENS)
    top1 = rng.uniform(size=TOKENS) < 0.9
    ref_stats = quality_stats(ref_lp, ref_lp, np.zeros(TOKENS), np.ones(TOKENS, bool))
    reference = Measurements("tiny", "reference", "cpu", quality=_quality(ref_lp, np.zeros(TOKENS), np.ones(TOKENS)),
                             stats=ref_stats, vram=VramMeasurement("cpu", 40_000_000, 40_000_000),
                             throughput=_throughput(100.0), is_reference=True)
    generation = GenerationAgreement(exact_match_percent=62.5, mean_prefix_tokens=5.5, tokens_compared=8, prompts=8,
                                     generated_tokens=64, seconds=0.5)
    return Measurements("tiny", "bnb-nf4", "cpu", quality=_quality(lp, kl, top1),
                        stats=quality_stats(lp, ref_lp, kl, top1), vram=VramMeasurement("cpu", 12_000_000, 12_000_000),
                        throughput=_throughput(60.0), generations=(generation,), reference=reference)
