"""The gate end to end through pytester: real bitsandbytes on CPU, the embedded model, each marker just
above and just below what was measured."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .conftest import FAST

PROBE = """
import pytest

@pytest.mark.vram_budget("1 TiB")
@pytest.mark.tokens_per_second(min=1e-9)
@pytest.mark.perplexity_delta(max=1e9)
@pytest.mark.kl_divergence(max_mean=1e9)
def test_probe(quant_model):
    pass
"""


def junit_properties(path: Path) -> dict[str, dict[str, str]]:
    """``{pair id: {metric: value}}`` from a junit XML file's ``quant.*`` properties."""
    pairs: dict[str, dict[str, str]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        props = {p.get("name").removeprefix("quant."): p.get("value") for p in case.iter("property")}
        if "pair" in props:
            pairs.setdefault(props["pair"], {}).update(props)
    return pairs


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    """What reference and bnb-nf4 measure on this machine (a first, independent pytest run)."""
    root = tmp_path_factory.mktemp("probe")
    (root / "test_probe.py").write_text(PROBE)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *FAST, "--quant-recipes", "reference,bnb-nf4",
           f"--junitxml={root / 'junit.xml'}", "-q", str(root)]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    pairs = junit_properties(root / "junit.xml")
    numeric = {}
    for pair, props in pairs.items():
        numeric[pair] = {k: float(v) for k, v in props.items() if v.replace(".", "", 1).replace("-", "", 1).isdigit()}
    return numeric


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """Test function name (without the parameter id) -> outcome of its call (or setup error)."""
    out = {}
    for rep in result.reprec.getreports("pytest_runtest_logreport"):
        name = rep.nodeid.split("::")[-1].split("[")[0]
        if rep.when == "call" or (rep.when == "setup" and not rep.passed):
            out[name] = rep.outcome if rep.when == "call" else f"setup-{rep.outcome}"
    return out


def test_measured_values_are_sane(measured) -> None:
    ref, nf4 = measured["tiny-reference"], measured["tiny-bnb-nf4"]
    assert ref["eval_tokens"] == nf4["eval_tokens"] == 1024
    assert ref["mean_kl_nats"] == 0 and ref["top1_agreement_percent"] == 100
    assert 0 < nf4["mean_kl_nats"] < 0.5 and 50 < nf4["top1_agreement_percent"] < 100
    assert nf4["vram_resident_bytes"] < 0.5 * ref["vram_resident_bytes"]
    assert nf4["reference_perplexity"] == ref["perplexity"]
    assert nf4["delta_perplexity"] == pytest.approx(nf4["perplexity"] - ref["perplexity"], abs=1e-3)
    assert nf4["decode_tokens_per_s"] > 0 and nf4["prefill_tokens_per_s"] > 0


def test_each_marker_just_above_and_just_below_its_limit(pytester: pytest.Pytester, measured) -> None:
    nf4, ref = measured["tiny-bnb-nf4"], measured["tiny-reference"]
    vram, delta = int(nf4["vram_resident_bytes"]), nf4["delta_perplexity"]
    ratio = nf4["vram_resident_bytes"] / ref["vram_resident_bytes"]
    rel = delta / ref["perplexity"]
    kl, top1, p99 = nf4["mean_kl_nats"], nf4["top1_agreement_percent"], nf4["p99_kl_nats"]
    tps = nf4["decode_tokens_per_s"]
    # Deterministic metrics sit 0.1% either side of the limit (more for values rounded in junit);
    # CPU tokens/s is noisy on a shared machine, so its limits sit 20x either side.
    pytester.makepyfile(
        test_limits=f"""
import pytest

@pytest.mark.vram_budget({vram + 1})
def test_vram_pass(quant_model): pass

@pytest.mark.vram_budget({vram - 1})
def test_vram_fail(quant_model): pass

@pytest.mark.vram_budget(ratio={ratio * 1.001})
def test_vram_ratio_pass(quant_model): pass

@pytest.mark.vram_budget(ratio={ratio * 0.999})
def test_vram_ratio_fail(quant_model): pass

@pytest.mark.perplexity_delta(max={delta + 0.002})
def test_ppl_pass(quant_model): pass

@pytest.mark.perplexity_delta(max={delta - 0.002})
def test_ppl_fail(quant_model): pass

@pytest.mark.perplexity_delta(max_rel={rel * 1.01})
def test_ppl_rel_pass(quant_model): pass

@pytest.mark.perplexity_delta(max_rel={rel * 0.99})
def test_ppl_rel_fail(quant_model): pass

@pytest.mark.kl_divergence(max_mean={kl * 1.001})
def test_kl_pass(quant_model): pass

@pytest.mark.kl_divergence(max_mean={kl * 0.999})
def test_kl_fail(quant_model): pass

@pytest.mark.kl_divergence(max_p99={p99 * 1.001})
def test_p99_pass(quant_model): pass

@pytest.mark.kl_divergence(max_p99={p99 * 0.999})
def test_p99_fail(quant_model): pass

@pytest.mark.kl_divergence(min_top1={top1 - 0.01})
def test_top1_pass(quant_model): pass

@pytest.mark.kl_divergence(min_top1={top1 + 0.01})
def test_top1_fail(quant_model): pass

@pytest.mark.tokens_per_second(min={tps / 20})
def test_tps_pass(quant_model): pass

@pytest.mark.tokens_per_second(min={tps * 20})
def test_tps_fail(quant_model): pass

@pytest.mark.tokens_per_second(min_ratio=0.01)
def test_tps_ratio_pass(quant_model): pass

@pytest.mark.tokens_per_second(min_ratio=100)
def test_tps_ratio_fail(quant_model): pass
"""
    )
    result = pytester.runpytest(*FAST, "-p", "no:cacheprovider", "--quant-recipes", "bnb-nf4", "-rf")
    got = outcomes(result)
    expected = {name: ("passed" if name.endswith("_pass") else "failed") for name in got}
    assert got == expected
    assert len(got) == 18
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*VRAM budget * exceeded: footprint * [[]tiny, bnb-nf4, cpu[]]*",
            "*perplexity * over reference *, above max * [[]tiny, bnb-nf4, cpu[]]*",
            "*mean KL * nats exceeds max_mean * nats*",
            "*top-1 agreement *% below min_top1 *%*",
            "*decode * tok/s below floor * tok/s*",
            "*pytest-quant summary*",
            "*tiny*bnb-nf4*cpu*Linear4bit*FAIL*",
        ]
    )
    # the detail section carries the other metrics
    assert "quant metrics" in out and "top1_agreement_percent:" in out


def test_reference_is_not_gated_against_itself(run_quant) -> None:
    result = run_quant(
        """
import pytest

@pytest.mark.vram_budget(ratio=0.5)
@pytest.mark.perplexity_delta(max=0)
@pytest.mark.kl_divergence(max_mean=0, min_top1=100)
def test_relative(quant_model):
    assert quant_model.recipe.name == "reference"
""",
        "--quant-recipes",
        "reference",
    )
    result.assert_outcomes(passed=1)


def test_bad_marker_argument_is_an_error_naming_it(run_quant) -> None:
    result = run_quant(
        """
import pytest

@pytest.mark.vram_budget("six gigs")
def test_vram(quant_model): pass

@pytest.mark.tokens_per_second(mn=3)
def test_tps(quant_model): pass

@pytest.mark.perplexity_delta(max=-1)
def test_ppl(quant_model): pass

@pytest.mark.perplexity_delta(max=1)
def test_no_fixture(): pass
""",
        "--quant-recipes",
        "bnb-nf4",
    )
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines_random(
        [
            "*'six gigs' is not a size; write a number and a unit such as '6 GiB'*",
            "*tokens_per_second: unknown keyword(s) mn; accepted: min, min_ratio*",
            "*perplexity_delta(max=-1): must be >= 0*",
            "*add the quant_model fixture to test_no_fixture*",
        ]
    )
