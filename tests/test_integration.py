"""End to end through a real model (the embedded one, real bitsandbytes on CPU): what one session measures,
read back from its junit properties and report; then the markers against those figures in a second session,
where a violated gate has its own status, sentence and summary row. The pure checks themselves are unit-tested
on constructed figures in tests/gates/."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

FAST = ("--quant-eval-tokens", "512", "-p", "no:cacheprovider")
TOKENS = 8  # generated tokens compared: few enough that nf4 agrees with the reference on some prompts

PROBE = f"""
import pytest

@pytest.mark.vram_budget("1 TiB")
@pytest.mark.tokens_per_second(min=1e-9)
@pytest.mark.perplexity_delta(max=1e9)
@pytest.mark.kl_divergence(max_mean=1e9)
@pytest.mark.generation_agreement(min_prefix_tokens=0.001, tokens={TOKENS})
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


MEASURED = pytest.StashKey[dict]()


@pytest.fixture
def measured(request: pytest.FixtureRequest) -> dict:
    """What reference and bnb-nf4 measure here: a first pytest session of its own, read back from its junit
    properties and its report. It runs once, in-process, in a folder of the pytester directory of the first test
    that asks (its test file removed afterwards, so that a later session there does not collect it)."""
    pytest.importorskip("bitsandbytes")
    if MEASURED not in request.config.stash:
        request.config.stash[MEASURED] = probe(request.getfixturevalue("pytester"))
    return request.config.stash[MEASURED]


def probe(pytester: pytest.Pytester) -> dict:
    root = pytester.mkdir("probe")
    (root / "test_probe.py").write_text(PROBE)
    report = root / "report.md"
    done = pytester.runpytest(*FAST, "--quant-recipes", "reference,bnb-nf4", f"--junitxml={root / 'junit.xml'}",
                              "-q", "--quant-report", str(report), f"--quant-cache-dir={root / '.quant-cache'}",
                              str(root))
    (root / "test_probe.py").unlink()
    assert done.ret == 0, done.stdout.str() + done.stderr.str()
    numeric: dict = {}
    for pair, props in junit_properties(root / "junit.xml").items():
        numeric[pair] = {}
        for key, value in props.items():
            try:
                numeric[pair][key] = float(value)
            except ValueError:
                pass
    numeric["report"] = report.read_text()
    return numeric


def test_measured_values_are_sane(measured) -> None:
    ref, nf4 = measured["tiny-reference"], measured["tiny-bnb-nf4"]
    assert ref["eval_tokens"] == nf4["eval_tokens"] == 512
    assert ref["mean_kl_nats"] == 0 and ref["top1_agreement_percent"] == 100
    assert 0 < nf4["mean_kl_nats"] < 0.5 and 50 < nf4["top1_agreement_percent"] < 100
    assert nf4["vram_resident_bytes"] < 0.5 * ref["vram_resident_bytes"]
    assert nf4["reference_perplexity"] == ref["perplexity"]
    assert nf4["delta_perplexity"] == pytest.approx(nf4["perplexity"] - ref["perplexity"], abs=1e-3)
    assert nf4["decode_tokens_per_s"] > 0 and nf4["prefill_tokens_per_s"] > 0


def test_the_statistics_are_properties_with_their_standard_errors(measured) -> None:
    ref, nf4 = measured["tiny-reference"], measured["tiny-bnb-nf4"]
    assert nf4["eval_batch_windows"] == ref["eval_batch_windows"] == 8
    assert ref["perplexity_se"] > 0 and "mean_kl_se_nats" not in ref  # no divergence SE against itself
    assert nf4["reference_perplexity_se"] == ref["perplexity_se"]
    for key in ("perplexity_se", "delta_perplexity_se", "ln_ppl_ratio_se", "mean_kl_se_nats", "rms_delta_p_se_percent",
                "top1_agreement_se_percent"):
        assert nf4[key] > 0, key
    # the paired SE of the difference is far below the perplexity's own
    assert nf4["delta_perplexity_se"] < nf4["perplexity_se"] / 2
    assert nf4["ln_ppl_ratio"] == pytest.approx(math.log(nf4["perplexity"] / ref["perplexity"]), abs=2e-6)
    assert nf4["min_kl_nats"] <= nf4["median_kl_nats"] <= nf4["p99_kl_nats"] <= nf4["p999_kl_nats"] <= nf4["max_kl_nats"]
    assert nf4["rms_delta_p_percent"] >= abs(nf4["mean_delta_p_percent"])
    assert nf4["generation_compared_tokens"] == TOKENS and nf4["generation_prompts"] == 8
    assert ref["generation_exact_match_percent"] == 100 and ref["generation_mean_prefix_tokens"] == TOKENS
    assert 0 < nf4["generation_tokens"] <= 8 * TOKENS and nf4["generation_s"] > 0
    # the report: its header states the batch, and the first prompt's outputs are side by side
    report = measured["report"]
    assert "8 windows a batch" in report
    assert f"### tiny: greedy outputs, first {TOKENS} tokens" in report
    assert "| reference |" in report and "| bnb-nf4 |" in report


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """Test name with its parameter id -> outcome of its call (or setup error)."""
    out = {}
    for rep in result.reprec.getreports("pytest_runtest_logreport"):
        name = rep.nodeid.split("::")[-1]
        if rep.when == "call" or (rep.when == "setup" and not rep.passed):
            out[name] = rep.outcome if rep.when == "call" else f"setup-{rep.outcome}"
    return out


def test_markers_against_the_measured_figures_in_a_second_session(pytester: pytest.Pytester, measured) -> None:
    """The same figures again in another session (quality is deterministic): each kind of limit just above and
    just below them, the reference never gated against itself, a confidence bound inconclusive."""
    nf4, ref = measured["tiny-bnb-nf4"], measured["tiny-reference"]
    kl, kl_se = nf4["mean_kl_nats"], nf4["mean_kl_se_nats"]
    ratio = nf4["vram_resident_bytes"] / ref["vram_resident_bytes"]
    exact = nf4["generation_exact_match_percent"]
    pytester.makepyfile(test_limits=f"""
import pytest

@pytest.mark.vram_budget({int(ref["vram_resident_bytes"]) + 1})  # absolute: the reference is gated by it too
@pytest.mark.kl_divergence(max_mean={kl * 1.001})
@pytest.mark.generation_agreement(min_exact_percent={max(exact - 1, 0)}, tokens={TOKENS})
def test_pass(quant_model): pass

@pytest.mark.vram_budget(ratio={ratio * 0.999})
def test_vram_ratio_fail(quant_model): pass

@pytest.mark.kl_divergence(max_mean={kl + 0.8 * kl_se}, confidence=0.95)
def test_kl_inconclusive_fail(quant_model): pass

@pytest.mark.generation_agreement(min_exact_percent={min(exact + 1, 100)}, tokens={TOKENS})
def test_generation_fail(quant_model): pass
""")
    result = pytester.runpytest(*FAST, "--quant-recipes", "reference,bnb-nf4", "-rf", "-v")
    got = outcomes(result)
    assert got == {"test_pass[tiny-reference]": "passed", "test_pass[tiny-bnb-nf4]": "passed",
                   "test_vram_ratio_fail[tiny-reference]": "passed", "test_vram_ratio_fail[tiny-bnb-nf4]": "failed",
                   "test_kl_inconclusive_fail[tiny-reference]": "passed",
                   "test_kl_inconclusive_fail[tiny-bnb-nf4]": "failed",
                   "test_generation_fail[tiny-reference]": "passed", "test_generation_fail[tiny-bnb-nf4]": "failed"}
    result.stdout.fnmatch_lines_random([
        "*test_vram_ratio_fail*QUANT GATE*",
        "*VRAM ratio * of reference exceeds *: footprint * vs reference * [[]tiny, bnb-nf4, cpu[]]*",
        "*mean KL *±* nats exceeds max_mean * nats: only its 95% upper bound * does: inconclusive at 512 tokens*",
        f"*% of greedy generations equal the reference's (first {TOKENS} tokens of 8 prompts), below min_exact_percent*",
        "*pytest-quant gate violations*",
        "*tiny*bnb-nf4*cpu*Linear4bit*FAIL*",
    ])
    assert "quant metrics" in result.stdout.str()  # the detail section carries the other figures


NOISY_CONFTEST = """
from pytest_quant.backends import Backend, Loaded


def load_noisy(request):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(request.model_path, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a heavy perturbation: Gaussian noise of a third of each weight's spread
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                w = module.weight
                w.add_(torch.randn(w.shape, generator=generator) * w.std() / 3)
    model.eval()
    return Loaded(model, AutoTokenizer.from_pretrained(request.model_path), "float32", kernel="NoisyLinear")


def pytest_quant_backends(config):
    return [Backend("noisy", load_noisy, requires=("torch",), install_hint="pip install torch")]
"""


def test_generation_agreement_tells_a_heavily_perturbed_model_from_int8(pytester: pytest.Pytester) -> None:
    pytest.importorskip("bitsandbytes")
    pytester.makeconftest(NOISY_CONFTEST)
    pytester.makepyprojecttoml('[tool.pytest-quant.recipes.noisy]\nbackend = "noisy"\n')
    (pytester.path / "prompts.txt").write_text("The history of the city begins\nIn the first years of the war\n"
                                               "The river runs through\nScientists have long known that\n")
    pytester.makepyfile("""
import pytest

@pytest.mark.generation_agreement(min_exact_percent=50, tokens=16)
def test_agrees(quant_model): pass
""")
    result = pytester.runpytest(*FAST, "--quant-recipes", "bnb-int8,noisy", "--quant-prompts", "prompts.txt")
    rows = {}
    for rep in result.reprec.getreports("pytest_runtest_logreport"):
        props = {k.removeprefix("quant."): v for k, v in rep.user_properties}
        if rep.when == "call" and props:
            rows[props["recipe"]] = props
    int8, noisy = rows["bnb-int8"], rows["noisy"]
    assert noisy["generation_exact_match_percent"] < int8["generation_exact_match_percent"]
    assert noisy["generation_mean_prefix_tokens"] < int8["generation_mean_prefix_tokens"]
    assert int8["generation_prompts"] == noisy["generation_prompts"] == 4
    assert noisy["generation_sample"]["prompt"] == "The history of the city begins"
    assert noisy["generation_sample"]["reference"] == int8["generation_sample"]["reference"]
    calls = {r.nodeid.split("[")[-1].rstrip("]"): r.outcome for r in result.reprec.getreports("pytest_runtest_logreport")
             if r.when == "call"}
    assert calls["tiny-noisy"] == "failed"
    assert calls["tiny-bnb-int8"] == ("passed" if int8["generation_exact_match_percent"] >= 50 else "failed")
    result.stdout.fnmatch_lines(["*below min_exact_percent 50 [[]tiny, noisy, cpu[]]*"])
