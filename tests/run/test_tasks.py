"""Task accuracy and layer errors through the plugin, as a user sees them: a backend of the test's own (through
the hook) that perturbs one middle layer heavily is named by layer_error and by its failed KL gate's message; both
models answer the task items in one session; a bad task file is a usage error naming file:line."""

from __future__ import annotations

import json

import pytest

BROKEN_LAYER = 3
PERTURBING_CONFTEST = f"""
from pytest_quant.backends import Backend, Loaded


def load_perturbed(request):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(request.model_path, dtype=torch.float32).eval()
    with torch.no_grad():  # one middle layer's MLP output weights drowned in noise as large as themselves
        weight = model.model.layers[{BROKEN_LAYER}].mlp.down_proj.weight
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * weight.std())
    return Loaded(model, AutoTokenizer.from_pretrained(request.model_path), "float32", kernel="NoisyLinear")


def pytest_quant_backends(config):
    return [Backend("perturbed", load_perturbed, requires=("torch",), install_hint="pip install torch")]
"""
PYPROJECT = """
[tool.pytest-quant.recipes.broken-middle]
backend = "perturbed"
"""
ARGS = ("-p", "no:cacheprovider", "--quant-eval-tokens", "512", "--quant-recipes", "broken-middle",
        "--quant-cache-dir=cache")


def test_a_heavily_perturbed_middle_layer_is_named_by_layer_error_and_by_the_failed_kl_gate(pytester):
    pytester.makeconftest(PERTURBING_CONFTEST)
    pytester.makepyprojecttoml(PYPROJECT)
    pytester.makepyfile("""
import pytest

@pytest.mark.kl_divergence(max_mean=0.01)
def test_quality(quant_model):
    pass

@pytest.mark.layer_error(min_sqnr_db=20)
def test_layers(quant_model):
    pass
""")
    result = pytester.runpytest(*ARGS)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*test_quality*tiny-broken-middle*",
        f"*mean KL * nats exceeds max_mean 0.01 nats [[]tiny, broken-middle, cpu[]]; worst layers: layers.{BROKEN_LAYER} "
        "* dB own SQNR (cumulative * dB)*",
        "*test_layers*tiny-broken-middle*",
        f"*layers.{BROKEN_LAYER} own SQNR * dB below min_sqnr_db 20.0 dB (cumulative SQNR there * dB; 1 of 7 layers "
        "below, lm_head included)*"])


def test_both_models_answer_the_task_in_one_session_and_the_drop_is_gated(pytester):
    pytester.makeconftest(PERTURBING_CONFTEST)
    pytester.makepyprojecttoml(PYPROJECT)
    items = [{"question": "It was a cold day in", "choices": ["November", "spoke", "the"], "answer": 0},
             {"question": "Anne Elliot was the daughter of Sir", "choices": ["Walter", "Bath", "very"], "answer": "Walter"},
             {"question": "The navy, said Admiral", "choices": ["Croft", "was", "she"], "answer": 0}] * 10
    (pytester.path / "items.jsonl").write_text("\n".join(json.dumps(i) for i in items) + "\n")
    pytester.makepyfile("""
import pytest

@pytest.mark.task_accuracy(max_drop=100)
def test_task(quant_model):
    pass

@pytest.mark.task_accuracy(max_drop=0, confidence=0.9)
def test_no_drop_at_all(quant_model):
    pass
""")
    result = pytester.runpytest(*ARGS, "--quant-tasks=items.jsonl", "--quant-report=report.json")
    result.stdout.fnmatch_lines(["*tiny-reference: answering 30 items of items.jsonl*",
                                 "*tiny-broken-middle: answering 30 items of items.jsonl*"])
    row = json.loads((pytester.path / "report.json").read_text())["results"][0]
    paired = (row["task_acc_lost_items"], row["task_acc_gained_items"])
    assert row["task_items"] == 30
    assert row["task_acc_difference_points"] == pytest.approx((paired[1] - paired[0]) / 30 * 100, abs=1e-3)
    assert row["task_acc_percent"] - row["reference_task_acc_percent"] == pytest.approx(row["task_acc_difference_points"],
                                                                                        abs=2e-3)
    # max_drop=100 always holds; max_drop=0 never does: even with no item flipped, 30 items cannot exclude a drop
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*items.jsonl acc * against the reference's *: a drop of * points (* items lost, * "
                                 "gained of 30; McNemar p=*)*max_drop 0 points*exact from * discordant items*"])


def test_a_bad_task_file_is_a_usage_error_naming_its_line(pytester):
    (pytester.path / "items.jsonl").write_text('{"question": "q", "answer": "a"}\n{"question": "q", "choices": ["a"]}\n')
    pytester.makepyfile("def test_x(quant_model): pass")
    result = pytester.runpytest("-p", "no:cacheprovider", "--quant-tasks=items.jsonl")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--quant-tasks 'items.jsonl': items.jsonl:2: \"choices\" must be a list of at least 2*"])
    pytester.makeini("[pytest]\nquant_tasks = items.jsonl\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini quant_tasks = 'items.jsonl'*items.jsonl:2:*"])


def test_only_the_references_whose_tests_or_variants_need_tasks_answer_them():
    from pathlib import Path
    from types import SimpleNamespace

    from pytest_quant.run.references import References

    references = References(None, None, None, None, None, None, Path("."), 510, lambda message: None)
    references.plan(frozenset({"quality", "tasks"}), tasks_for=frozenset({"tiny-reference"}))
    assert "tasks" in references.needs_of(SimpleNamespace(id="tiny-reference"))
    assert "tasks" not in references.needs_of(SimpleNamespace(id="tiny-gguf-reference"))
    references.plan(frozenset({"quality"}))
    assert "tasks" not in references.needs_of(SimpleNamespace(id="tiny-reference"))


OPAQUE_CONFTEST = """
from pytest_quant.backends import Backend, Loaded


class Opaque:
    '''A runtime that answers like a causal LM but is no torch module: no layers to hook.'''

    def __init__(self, model):
        self._model = model
        self.config, self.device, self.generation_config = model.config, model.device, model.generation_config

    def __call__(self, *args, **kwargs):
        return self._model(*args, **kwargs)

    def forward(self, *args, **kwargs):
        return self._model(*args, **kwargs)

    def get_memory_footprint(self):
        return self._model.get_memory_footprint()


def load_opaque(request):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(request.model_path, dtype=torch.float32).eval()
    return Loaded(Opaque(model), AutoTokenizer.from_pretrained(request.model_path), "float32", kernel="Opaque")


def pytest_quant_backends(config):
    return [Backend("opaque", load_opaque, requires=("torch",), install_hint="pip install torch")]
"""


def test_a_runtime_without_torch_layers_skips_layer_error_with_the_reason(pytester):
    pytester.makeconftest(OPAQUE_CONFTEST)
    pytester.makepyprojecttoml('[tool.pytest-quant.recipes.opaque]\nbackend = "opaque"\n')
    pytester.makepyfile("""
import pytest

@pytest.mark.kl_divergence(max_mean=1)
def test_quality(quant_model):
    pass

@pytest.mark.layer_error(min_sqnr_db=20)
def test_layers(quant_model):
    pass
""")
    result = pytester.runpytest("-p", "no:cacheprovider", "--quant-eval-tokens", "256", "--quant-recipes", "opaque",
                                "-rs")
    result.assert_outcomes(passed=1, skipped=1)  # its layers were found unhookable with quality, then skipped
    result.stdout.fnmatch_lines(["*SKIPPED*layer_error: tiny-opaque: Opaque exposes no decoder layers as torch "
                                 "modules*"])
