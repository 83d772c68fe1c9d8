"""run.session through pytester: a backend that returns no model, or a model with non-finite logits, fails its
own tests with one line naming it, keeps its summary row, and never stops the later recipes."""

from __future__ import annotations

import pytest

BAD_BACKENDS = """
from pytest_quant.backends import Backend, Loaded


def load_none(request):
    return Loaded(None, None, "float32")


def load_nan(request):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(request.model_path, dtype=torch.float32)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")  # one element is enough
    return Loaded(model.eval(), AutoTokenizer.from_pretrained(request.model_path), "float32", kernel="NanLinear")


def pytest_quant_backends(config):
    return [Backend("none", load_none, requires=(), install_hint="-"),
            Backend("nan", load_nan, requires=("torch",), install_hint="-")]
"""
RECIPES = """
[tool.pytest-quant.recipes.none-q]
backend = "none"

[tool.pytest-quant.recipes.nan-q]
backend = "nan"
"""


def test_bad_backend_results_fail_their_own_tests_and_the_session_goes_on(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(BAD_BACKENDS)
    pytester.makepyprojecttoml(RECIPES)
    pytester.makepyfile("""
import pytest

@pytest.mark.perplexity_delta(max_rel=0.5, vs="baseline")
def test_q(quant_model):
    pass
""")
    result = pytester.runpytest("-p", "no:cacheprovider", "--quant-eval-tokens", "256", "--snapshot-update",
                                "--quant-recipes", "none-q,nan-q,reference")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "INTERNALERROR" not in out
    result.stdout.fnmatch_lines_random([
        "*backend 'none' loaded tiny-none-q as Loaded(None, ...): no model*",
        "*tiny-nan-q: the model's log-probabilities are not finite (NaN or Inf) at * of 256 scored tokens, the first "
        "at token *: its weights or its kernels produce non-finite logits; nothing is gated or recorded from them*",
        "tiny*none-q*FAIL*",
        "tiny*nan-q*NanLinear*FAIL*",
        "tiny*reference*pass*",
    ])
    # nothing was recorded from the failed recipes; the reference's baseline was
    written = sorted(p.name for p in (pytester.path / "baselines").rglob("*.json"))
    assert written == ["test_q[tiny-reference].json"]
