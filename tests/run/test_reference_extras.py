"""run.reference_extras: the reference's cached task answers and layer data are used only when they fit this
run's items and sample, and every figure is derived from them again."""

from __future__ import annotations

import json

import pytest
import torch

from pytest_quant.measure.layers import LayerReference
from pytest_quant.measure.tasks import ItemAnswer, TaskAnswers, TaskItem
from pytest_quant.run.reference_extras import load_layers, load_tasks, save_layers, save_tasks

ITEMS = (TaskItem("t:1", "q", 0, ("a", "b")), TaskItem("t:2", "q", "Bath"))
ANSWERS = TaskAnswers((ItemAnswer((-1.5, -2.0)), ItemAnswer(generated="Bath")), 0.25)


def test_task_answers_come_back_only_for_their_key_and_items(tmp_path):
    path = tmp_path / "tasks.json"
    save_tasks(path, "key", "digest", ANSWERS)
    assert load_tasks(path, "key", "digest", ITEMS) == (ANSWERS, None)
    assert load_tasks(path, "other", "digest", ITEMS) == (None, "another format, key or task")
    assert load_tasks(path, "key", "other items", ITEMS)[1] == "another format, key or task"
    assert load_tasks(path, "key", "digest", ITEMS[:1])[1] == "2 answers for 1 items"
    assert load_tasks(tmp_path / "none.json", "key", "digest", ITEMS) == (None, None)


@pytest.mark.parametrize("forge, says", [
    (lambda rows: rows[0].update(choice_logprobs=[0.5, -2.0]), "not one finite log-likelihood <= 0 per choice"),
    (lambda rows: rows[0].update(choice_logprobs=[-1.0]), "not one finite log-likelihood <= 0 per choice"),
    (lambda rows: rows[1].update(generated=7), "is not a generated text"),
    (lambda rows: rows[1].pop("generated"), "is not a generated text"),
])
def test_answers_that_do_not_fit_the_items_are_refused(tmp_path, forge, says):
    path = tmp_path / "tasks.json"
    save_tasks(path, "key", "digest", ANSWERS)
    body = json.loads(path.read_text())
    forge(body["answers"])
    path.write_text(json.dumps(body))
    found, why = load_tasks(path, "key", "digest", ITEMS)
    assert found is None and says in why


def _layers(tokens: int = 4) -> LayerReference:
    g = torch.Generator().manual_seed(0)
    return LayerReference(tuple(range(tokens)), ("layers.0", "layers.1"), torch.randn(2, tokens, 8, generator=g),
                          torch.randn(2, tokens, 8, generator=g), torch.randn(tokens, 8, generator=g),
                          torch.randn(tokens, 16, generator=g))


def test_layer_data_comes_back_only_for_its_key_and_sample(tmp_path):
    path = tmp_path / "layers.st"
    kept = _layers()
    save_layers(path, "key", kept)
    found, why = load_layers(path, "key", (0, 1, 2, 3))
    assert why is None and found.names == kept.names and torch.equal(found.outputs, kept.outputs)
    assert load_layers(path, "other", (0, 1, 2, 3)) == (None, "another format or key")
    assert load_layers(path, "key", (0, 1, 2, 5)) == (None, "its sample tokens are not this run's")


def test_torn_or_non_finite_layer_data_is_refused(tmp_path):
    path = tmp_path / "layers.st"
    kept = _layers()
    save_layers(path, "key", LayerReference(kept.input_ids, kept.names, kept.inputs, kept.outputs[:, :3],
                                            kept.head_input, kept.head_logits))
    assert load_layers(path, "key", kept.input_ids) == (None, "its arrays do not fit together")
    broken = kept.outputs.clone()
    broken[1, 2, 3] = float("nan")
    save_layers(path, "key", LayerReference(kept.input_ids, kept.names, kept.inputs, broken, kept.head_input,
                                            kept.head_logits))
    assert load_layers(path, "key", kept.input_ids) == (None, "its arrays are not all finite")


def test_a_forged_cached_task_answer_is_measured_again(pytester):
    pytest.importorskip("bitsandbytes")
    pytester.makepyfile("""
import pytest

@pytest.mark.task_accuracy(max_drop=100)
def test_task(quant_model):
    pass
""")
    items = [{"question": "It was a cold day in", "choices": ["November", "spoke"], "answer": 0}] * 3
    (pytester.path / "items.jsonl").write_text("\n".join(json.dumps(i) for i in items) + "\n")
    args = ("-p", "no:cacheprovider", "--quant-eval-tokens", "256", "--quant-recipes", "bnb-int8",
            "--quant-cache-dir=cache", "--quant-tasks=items.jsonl")
    pytester.runpytest(*args).assert_outcomes(passed=1)
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*tiny: reference figures from the cache*not loaded*"])
    (path,) = (pytester.path / "cache").rglob("references/*-tasks-*.json")
    body = json.loads(path.read_text())
    body["answers"][0]["choice_logprobs"][0] = 3.0  # a forged answer: more likely than certain
    path.write_text(json.dumps(body))
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*its answers to items.jsonl the answer to items.jsonl:1 is not one finite "
                                 "log-likelihood <= 0 per choice: measuring it again*",
                                 "*loading tiny under reference*"])
