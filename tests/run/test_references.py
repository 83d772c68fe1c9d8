"""run.references: a cached reference is used only when its stored figures are what its stored per-token
log-probabilities give; a forged, truncated or stale entry is measured again with a line saying why."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from pytest_quant.measure.quality import QualityMeasurement
from pytest_quant.measure.stats import quality_stats
from pytest_quant.run.references import inconsistency


class Kept:  # the part of measure.reference.CompactReference the check reads
    def __init__(self, logprobs):
        self.logprob_target = torch.tensor(logprobs, dtype=torch.float32)

    @property
    def tokens_scored(self) -> int:
        return len(self.logprob_target)


def consistent(n: int = 256):
    logprobs = torch.log(torch.linspace(0.05, 0.95, n)).tolist()
    kept = Kept(logprobs)
    lp = kept.logprob_target.double()
    stats = quality_stats(lp, lp, [0.0] * n, [True] * n)
    nll = -float(lp.mean())
    quality = QualityMeasurement(math.exp(nll), nll, n, 1, 512, 512, 0.0, 0.0, 100.0, 1.0)
    return kept, quality, stats


def test_a_consistent_entry_passes() -> None:
    kept, quality, stats = consistent()
    assert inconsistency(kept, quality, stats, 256) is None


def test_a_forged_perplexity_is_found() -> None:
    kept, quality, stats = consistent()
    problem = inconsistency(kept, dataclasses.replace(quality, perplexity=1e12), stats, 256)
    assert problem.startswith("perplexity 1000000000000.0 stored, ")


def test_forged_statistics_are_found() -> None:
    kept, quality, stats = consistent()
    problem = inconsistency(kept, quality, dataclasses.replace(stats, perplexity_se=0.001), 256)
    assert problem.startswith("stats.perplexity_se 0.001 stored")


def test_another_token_count_or_broken_log_probabilities_are_found() -> None:
    kept, quality, stats = consistent()
    assert "this run scores 512" in inconsistency(kept, quality, stats, 512)
    assert "not all finite" in inconsistency(Kept([float("nan")] * 256), quality, stats, 256)


def forge(cache: Path) -> None:
    """The cached reference's stored perplexity replaced by 1e12, its tensors and key left as they are."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    (path,) = cache.rglob("references/*.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    meta = json.loads(header["metadata"])
    figures = json.loads(meta["figures"])
    figures["quality"]["perplexity"] = 1e12
    meta["figures"] = json.dumps(figures)
    header["metadata"] = json.dumps(meta, sort_keys=True)
    save_file(load_file(str(path)), str(path), metadata=header)


def test_a_forged_cached_reference_is_measured_again(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
import pytest

@pytest.mark.perplexity_delta(max_rel=0.05)
def test_q(quant_model):
    pass
""")
    pytest.importorskip("bitsandbytes")
    args = ("-p", "no:cacheprovider", "--quant-eval-tokens", "256", "--quant-recipes", "bnb-nf4",
            "--quant-cache-dir=cache")
    assert pytester.runpytest(*args).ret == pytest.ExitCode.OK
    forge(pytester.path / "cache")
    result = pytester.runpytest(*args, "-s")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*the cached reference tiny-*.safetensors is not consistent with itself (perplexity "
                                 "1000000000000.0 stored, * from its log-probabilities): measuring it again*",
                                 "*loading tiny under reference*"])
    shutil.rmtree(pytester.path / "cache")
