"""Quality with error bars through pytester: llama.cpp's statistics as properties, the new marker arguments
(confidence=, max_p999=, max_rms_delta_p=, generation_agreement) just above and just below what was measured,
a confidence bound that fails where the point passes, --quant-prompts, and generation agreement that tells a
heavily perturbed model from bnb-int8."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from statistics import NormalDist

import pytest

from .test_gate import junit_properties, outcomes

FAST = ("--quant-eval-tokens", "512", "-p", "no:cacheprovider")
TOKENS = 8  # generated tokens compared: few enough that nf4 agrees with the reference on some prompts

PROBE = f"""
import pytest

@pytest.mark.perplexity_delta(max=1e9)
@pytest.mark.kl_divergence(max_mean=1e9)
@pytest.mark.generation_agreement(min_prefix_tokens=0.001, tokens={TOKENS})
def test_probe(quant_model):
    pass
"""


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    """What reference and bnb-nf4 measure here: a first pytest run, read back from its junit properties."""
    pytest.importorskip("bitsandbytes")
    root = tmp_path_factory.mktemp("probe")
    (root / "test_probe.py").write_text(PROBE)
    report = root / "report.md"
    cmd = [sys.executable, "-m", "pytest", *FAST, "--quant-recipes", "reference,bnb-nf4", f"--junitxml={root / 'junit.xml'}",
           "-q", "--quant-report", str(report), str(root)]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    numeric = {}
    for pair, props in junit_properties(root / "junit.xml").items():
        numeric[pair] = {}
        for key, value in props.items():
            try:
                numeric[pair][key] = float(value)
            except ValueError:
                pass
    numeric["report"] = report.read_text()
    return numeric


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


def _between(point: float, bound: float) -> float:
    return (point + bound) / 2


def test_each_new_marker_argument_just_above_and_just_below_its_limit(pytester: pytest.Pytester, measured) -> None:
    nf4 = measured["tiny-bnb-nf4"]
    z = NormalDist().inv_cdf(0.95)
    n = nf4["eval_tokens"]
    p999, rms, rms_se = nf4["p999_kl_nats"], nf4["rms_delta_p_percent"], nf4["rms_delta_p_se_percent"]
    kl, kl_se = nf4["mean_kl_nats"], nf4["mean_kl_se_nats"]
    delta, delta_se = nf4["delta_perplexity"], nf4["delta_perplexity_se"]
    rel = math.expm1(nf4["ln_ppl_ratio"])
    rel_upper = math.expm1(nf4["ln_ppl_ratio"] + z * nf4["ln_ppl_ratio_se"])
    top1 = nf4["top1_agreement_percent"]
    p = top1 / 100  # the Wilson lower bound, written out
    wilson = 100 * (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    exact, prefix = nf4["generation_exact_match_percent"], nf4["generation_mean_prefix_tokens"]
    # floors are > 0 and percents <= 100: just above and just below need 0 < exact < 100
    assert 0 < exact < 100 and 0 < prefix < TOKENS, "nf4 agrees with the reference on some prompts, not all"
    pytester.makepyfile(test_limits=f"""
import pytest

@pytest.mark.kl_divergence(max_p999={p999 * 1.001})
def test_p999_pass(quant_model): pass

@pytest.mark.kl_divergence(max_p999={p999 * 0.999})
def test_p999_fail(quant_model): pass

@pytest.mark.kl_divergence(max_rms_delta_p={rms * 1.001})
def test_rms_pass(quant_model): pass

@pytest.mark.kl_divergence(max_rms_delta_p={rms * 0.999})
def test_rms_fail(quant_model): pass

@pytest.mark.kl_divergence(max_rms_delta_p={(rms + z * rms_se) * 1.01}, confidence=0.95)
def test_rms_confident_pass(quant_model): pass

@pytest.mark.kl_divergence(max_rms_delta_p={(rms + z * rms_se) * 0.99}, confidence=0.95)
def test_rms_confident_fail(quant_model): pass

@pytest.mark.kl_divergence(max_mean={(kl + z * kl_se) * 1.01}, confidence=0.95)
def test_kl_confident_pass(quant_model): pass

@pytest.mark.kl_divergence(max_mean={_between(kl, kl + z * kl_se)}, confidence=0.95)
def test_kl_inconclusive_fail(quant_model): pass

@pytest.mark.kl_divergence(min_top1={wilson - 0.05}, confidence=0.95)
def test_top1_confident_pass(quant_model): pass

@pytest.mark.kl_divergence(min_top1={_between(top1, wilson)}, confidence=0.95)
def test_top1_inconclusive_fail(quant_model): pass

@pytest.mark.perplexity_delta(max={delta + z * delta_se + 0.01}, confidence=0.95)
def test_ppl_confident_pass(quant_model): pass

@pytest.mark.perplexity_delta(max={_between(delta, delta + z * delta_se)}, confidence=0.95)
def test_ppl_inconclusive_fail(quant_model): pass

@pytest.mark.perplexity_delta(max_rel={rel_upper * 1.01}, confidence=0.95)
def test_ppl_rel_confident_pass(quant_model): pass

@pytest.mark.perplexity_delta(max_rel={_between(rel, rel_upper)}, confidence=0.95)
def test_ppl_rel_inconclusive_fail(quant_model): pass

@pytest.mark.perplexity_delta(max_rel={rel * 0.99}, confidence=0.95)
def test_ppl_rel_point_fail(quant_model): pass

@pytest.mark.generation_agreement(min_exact_percent={exact - 1}, tokens={TOKENS})
def test_exact_pass(quant_model): pass

@pytest.mark.generation_agreement(min_exact_percent={exact + 1}, tokens={TOKENS})
def test_exact_fail(quant_model): pass

@pytest.mark.generation_agreement(min_prefix_tokens={prefix - 0.01}, tokens={TOKENS})
def test_prefix_pass(quant_model): pass

@pytest.mark.generation_agreement(min_prefix_tokens={prefix + 0.01}, tokens={TOKENS})
def test_prefix_fail(quant_model): pass
""")
    result = pytester.runpytest(*FAST, "--quant-recipes", "bnb-nf4", "-rf")
    got = outcomes(result)
    assert got == {name: ("passed" if name.endswith("_pass") else "failed") for name in got}
    assert len(got) == 19
    result.stdout.fnmatch_lines_random([
        "*99.9th percentile KL * nats exceeds max_p999 * nats [[]tiny, bnb-nf4, cpu[]]*",
        "*RMS Δp * points exceeds max_rms_delta_p * points [[]tiny, bnb-nf4, cpu[]]*",
        # the point passes and only the bound fails: said so, with the tokens that would decide
        "*mean KL *±* nats exceeds max_mean * nats: only its 95% upper bound * does: inconclusive at 512 tokens; "
        "about * tokens would decide*",
        "*top-1 agreement *±*% below min_top1 *%: only its 95% lower bound *% (Wilson) does: inconclusive at 512 "
        "tokens; about * tokens would decide*",
        "*perplexity * is +*±* over reference *, above max *: only its 95% upper bound +* does: inconclusive*",
        "*perplexity * is +*% (ln ratio *±*) over reference *, above max_rel *%: only its 95% upper bound *",
        "*above max_rel *% (the point estimate itself; 95% upper bound *%)*",
        f"*% of greedy generations equal the reference's (first {TOKENS} tokens of 8 prompts), below min_exact_percent*",
        "* tokens before the first divergence, on average (first * tokens of 8 prompts), below min_prefix_tokens*",
    ])


def test_bad_new_marker_arguments_are_errors_naming_them(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
import pytest

@pytest.mark.kl_divergence(max_mean=0.1, confidence=1.5)
def test_confidence_range(quant_model): pass

@pytest.mark.kl_divergence(max_p99=0.1, confidence=0.95)
def test_confidence_without_a_limit_it_applies_to(quant_model): pass

@pytest.mark.generation_agreement(min_prefix_tokens=40)
def test_prefix_over_tokens(quant_model): pass

@pytest.mark.generation_agreement(min_exact_percent=50, tokens=0)
def test_tokens(quant_model): pass

@pytest.mark.tokens_per_second(min=1, confidence=0.95)
def test_confidence_elsewhere(quant_model): pass
""")
    result = pytester.runpytest(*FAST, "--quant-recipes", "reference")
    result.assert_outcomes(errors=5)
    result.stdout.fnmatch_lines_random([
        "*kl_divergence(confidence=1.5): expected a one-sided confidence level in [[]0.5, 1), such as 0.95*",
        "*kl_divergence(confidence=0.95) applies to max_mean, max_rms_delta_p, min_top1; give one of them*",
        "*generation_agreement(min_prefix_tokens=40): more than the 32 tokens compared (tokens=32)*",
        "*generation_agreement(tokens=0): expected a whole number >= 1*",
        "*tokens_per_second: unknown keyword(s) confidence*",
    ])


@pytest.mark.parametrize("content, name, where", [
    ("first prompt\n", "p.txt", None),
    ('{"prompt": "fine"}\n{"promt": "typo"}\n', "p.jsonl", "p.jsonl:2"),
])
def test_quant_prompts_is_checked_at_start_up(pytester: pytest.Pytester, content, name, where) -> None:
    (pytester.path / name).write_text(content)
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--quant-prompts", name, "-p", "no:cacheprovider")
    if where is None:
        result.assert_outcomes(passed=1)
        return
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--quant-prompts 'p.jsonl': prompts file {where}: has neither of*"])
    pytester.makeini(f"[pytest]\nquant_prompts = {name}\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*ini quant_prompts = 'p.jsonl'*{where}*"])


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


def _baseline(eval_context: dict) -> dict:
    return {"format_version": 1, "context": {"model": "tiny", "recipe": "bnb-int8", "device": "cpu",
                                             "eval": eval_context, "standard_errors": {"perplexity_se": 3.69}},
            "metrics": {"perplexity": 10.0}}


def test_a_baseline_of_another_evaluation_batch_is_not_compared() -> None:
    from pytest_quant.baselines.compare import compare
    from pytest_quant.baselines.record import dumps

    then = {"text": "eval.txt", "text_sha256": "ab" * 32, "tokens": 8192, "context_tokens": 512, "batch_windows": 8}
    now = json.loads(dumps(_baseline({**then, "batch_windows": 1})))
    outcome = compare(now, dumps(_baseline(then)), {"perplexity": 0.05})
    assert not outcome.matches(update=False)
    assert "8 windows a batch, this run on 8192 tokens of eval.txt (sha256 abababababab...), 1 windows a batch" \
        in outcome.problems[0]
    # a baseline from before the batch was recorded was evaluated 8 windows a batch, as every run then was
    older = {k: v for k, v in then.items() if k != "batch_windows"}
    assert compare(json.loads(dumps(_baseline(then))), dumps(_baseline(older)), {"perplexity": 0.05}).matches(False)


def test_the_report_shows_the_first_prompts_outputs_side_by_side_and_the_terminal_the_standard_errors() -> None:
    from datetime import datetime, timezone
    from types import SimpleNamespace

    from pytest_quant.report.documents import RunInfo, html_document, markdown
    from pytest_quant.report.rows import Rows, table

    sample = {"prompt": "It was a truth", "reference": " universally acknowledged", "output": " universally <known>"}
    rows = Rows()
    for recipe, extra in (("reference", {}), ("bnb-nf4", {"delta_perplexity": 1.372, "delta_perplexity_se": 0.915,
                                                           "mean_kl_nats": 0.00972, "mean_kl_se_nats": 0.00034})):
        props = {"pair": f"tiny-{recipe}", "model": "tiny", "recipe": recipe, "device": "cpu", "perplexity": 148.1,
                 "perplexity_se": 20.31, "eval_tokens": 512, "eval_batch_windows": 8, "generation_compared_tokens": 8,
                 "generation_sample": dict(sample, output=sample["reference"] if recipe == "reference" else
                                           sample["output"]), **extra}
        rows.add(SimpleNamespace(user_properties=[(f"quant.{k}", v) for k, v in props.items()], failed=False))
    info = RunInfo.of(rows, started=datetime(2025, 1, 2, tzinfo=timezone.utc), device="cpu", eval_text="eval.txt")
    text = markdown(rows, info)
    assert "- **eval tokens**: 512 of eval.txt, 8 windows a batch" in text
    assert "Prompt: It was a truth" in text
    assert "| reference |  universally acknowledged |\n| bnb-nf4 |  universally <known> |" in text
    page = html_document(rows, info)
    assert "<td>bnb-nf4</td><td class=\"out\"> universally &lt;known&gt;</td>" in page
    terminal = "\n".join(table(rows))
    assert "148.100±20" in terminal and "+1.372±0.92" in terminal and "0.00972±0.00034" in terminal
