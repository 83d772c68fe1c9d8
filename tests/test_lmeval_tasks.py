"""lm-eval tasks as task_accuracy's items (--quant-tasks=lm-eval:...): a local task YAML and data file written by
the test, run by lm-eval on the already loaded embedded model and gated the paired way; bad tasks are usage errors
at start-up; a missing lm-eval names the extra."""

from __future__ import annotations

import json

import pytest

from pytest_quant import lmeval_tasks
from pytest_quant.lmeval_tasks import INSTALL_HINT, LmEvalSpec, parse_spec

ITEMS = [("It was a cold day in", ["November", "spoke", "the"], 0),
         ("Anne Elliot was the daughter of Sir", ["Walter", "Bath", "very"], 0),
         ("The navy, said Admiral", ["Croft", "was", "she"], 2),
         ("She opened the", ["seven", "door", "ran"], 1)] * 3
YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {output_type}
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
BROKEN_CONFTEST = """
from pytest_quant.backends import Backend, Loaded


def load_broken(request):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(request.model_path, dtype=torch.float32).eval()
    with torch.no_grad():  # every layer's MLP output weights in noise twice as large as themselves
        for index, layer in enumerate(model.model.layers):
            weight = layer.mlp.down_proj.weight
            weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(index)) * weight.std() * 2)
    return Loaded(model, AutoTokenizer.from_pretrained(request.model_path), "float32", kernel="NoisyLinear")


def pytest_quant_backends(config):
    return [Backend("broken", load_broken, requires=("torch",), install_hint="pip install torch")]
"""


def write_task(folder, name="tiny_cloze", items=ITEMS, output_type="multiple_choice", labels=None):
    data = folder / f"{name}.jsonl"
    rows = [{"q": q, "choices": c, "label": a if labels is None else labels} for q, c, a in items]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    yaml = folder / f"{name}.yaml"
    yaml.write_text(YAML.format(name=name, data=data, output_type=output_type))
    return yaml


def test_a_spec_names_yaml_files_and_task_names(tmp_path):
    yaml = write_task(tmp_path)
    spec = parse_spec(f"lm-eval:{yaml}, other_task")
    assert spec == LmEvalSpec((str(yaml.resolve()), "other_task"))
    assert spec.name == "lm-eval tiny_cloze+other_task"
    for bad, says in (("lm-eval:", "no task named"), ("lm-eval:missing.yaml", "no such task YAML file"),
                      (f"lm-eval:{yaml},{yaml}", "named twice")):
        with pytest.raises(ValueError, match=says):
            parse_spec(bad)


def test_without_lm_eval_the_spec_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(lmeval_tasks, "installed", lambda: False)
    with pytest.raises(ValueError) as error:
        parse_spec(f"lm-eval:{write_task(tmp_path)}")
    assert "lm-eval tasks need lm-eval, which is not installed" in str(error.value) and INSTALL_HINT in str(error.value)


def test_without_lm_eval_the_run_is_a_usage_error_naming_the_extra(pytester, monkeypatch):
    monkeypatch.setattr(lmeval_tasks, "installed", lambda: False)
    write_task(pytester.path)
    pytester.makepyfile("def test_x(quant_model): pass")
    result = pytester.runpytest("-p", "no:cacheprovider", "--quant-tasks=lm-eval:tiny_cloze.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--quant-tasks 'lm-eval:tiny_cloze.yaml': lm-eval tasks need lm-eval, which is not "
                                 "installed: pip install 'pytest-quant[[]tasks[]]'*"])


needs_lm_eval = pytest.mark.skipif(not lmeval_tasks.installed(), reason=f"lm-eval is not installed ({INSTALL_HINT})")


@needs_lm_eval
def test_each_document_becomes_an_item(tmp_path):
    items, salt = lmeval_tasks.read_items(parse_spec(f"lm-eval:{write_task(tmp_path)}"))
    assert len(items) == len(ITEMS)
    assert (items[2].source, items[2].question, items[2].choices, items[2].answer) == (
        "lm-eval:tiny_cloze:2", "The navy, said Admiral", ("Croft", "was", "she"), 2)
    assert '"lm_eval"' in salt and "tiny_cloze" in salt


@needs_lm_eval
def test_an_lm_eval_task_runs_on_the_loaded_model_and_is_gated_the_paired_way(pytester):
    pytester.makeconftest(BROKEN_CONFTEST)
    pytester.makepyprojecttoml('[tool.pytest-quant.recipes.broken-all]\nbackend = "broken"\n')
    (pytester.path / "tasks").mkdir()
    write_task(pytester.path / "tasks")
    pytester.makepyfile("""
import pytest

@pytest.mark.task_accuracy(max_drop=100)
def test_task(quant_model):
    pass
""")
    result = pytester.runpytest("-p", "no:cacheprovider", "--quant-recipes=broken-all", "--quant-cache-dir=cache",
                                "--quant-tasks=lm-eval:tiny_cloze", "--quant-lm-eval-include=tasks",
                                "--quant-report=report.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*tiny-reference: answering {len(ITEMS)} items of lm-eval tiny_cloze*",
                                 f"*tiny-broken-all: answering {len(ITEMS)} items of lm-eval tiny_cloze*",
                                 "*tiny-broken-all: lm-eval tiny_cloze accuracy *% (* items lost, * gained against*"])
    row = json.loads((pytester.path / "report.json").read_text())["results"][0]
    assert row["task_items"] == len(ITEMS)
    lost, gained = row["task_acc_lost_items"], row["task_acc_gained_items"]
    assert row["task_acc_difference_points"] == pytest.approx(100 * (gained - lost) / len(ITEMS), abs=1e-3)


@needs_lm_eval
@pytest.mark.parametrize("change, says", [
    (dict(output_type="generate_until"), "output_type 'generate_until'; accepted: 'multiple_choice'"),
    (dict(labels=5), "tiny_cloze.yaml: lm-eval could not load the task or its data (IndexError: *); its data must "
                     "be local: dataset_path: json with dataset_kwargs: {data_files: ...}"),
])
def test_a_bad_task_is_a_usage_error_at_start_up(pytester, change, says):
    write_task(pytester.path, **change)
    pytester.makepyfile("def test_x(quant_model): pass")
    result = pytester.runpytest("-p", "no:cacheprovider", "--quant-tasks=lm-eval:tiny_cloze.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--quant-tasks lm-eval:*tiny_cloze.yaml: *{says}*"])


@needs_lm_eval
def test_an_unknown_task_name_or_a_stray_include_is_a_usage_error(pytester):
    (pytester.path / "tasks").mkdir()
    write_task(pytester.path / "tasks")
    pytester.makepyfile("def test_x(quant_model): pass")
    result = pytester.runpytest("-p", "no:cacheprovider", "--quant-tasks=lm-eval:no_such_task",
                                "--quant-lm-eval-include=tasks")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no lm-eval task named 'no_such_task' in --quant-lm-eval-include tasks or lm-eval's "
                                 "own tasks*"])
    result = pytester.runpytest("-p", "no:cacheprovider", "--quant-lm-eval-include=tasks")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--quant-lm-eval-include tasks: * it needs --quant-tasks=lm-eval:<task name>*"])


class _Task:  # what lmeval_tasks reads of an lm-eval Task: its three doc_to_* functions
    def __init__(self, text, choices, target):
        self.doc_to_text, self.doc_to_choice, self.doc_to_target = (lambda d: text), (lambda d: choices), (lambda d: target)


@pytest.mark.parametrize("text, choices, target, says", [
    (3, ["a", "b"], 0, "doc_to_text gave 3, not a text"),
    ("q", ["a"], 0, "doc_to_choice gave ['a']; accepted: a list of at least 2 texts"),
    ("q", ["a", "b"], "c", "doc_to_target gave 'c'; accepted: one choice's index (0 to 1) or its text"),
    ("q", ["a", "b"], [0, 1], "a list of several correct answers is not"),
])
def test_a_bad_document_is_named_with_what_is_accepted(text, choices, target, says):
    with pytest.raises(ValueError) as error:
        lmeval_tasks._document_item(_Task(text, choices, target), "mine", 7, {})
    assert str(error.value).startswith("lm-eval:mine: document 7: ") and says in str(error.value)


def test_a_choice_given_as_its_text_is_its_index():
    item = lmeval_tasks._document_item(_Task("q", ["a", "b"], "b"), "mine", 0, {})
    assert (item.answer, item.source) == (1, "lm-eval:mine:0")
