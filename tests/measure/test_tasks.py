"""measure.tasks: scoring as lm-eval does, checked against a plain one-sequence-at-a-time computation."""

from __future__ import annotations

import pytest
import torch

from pytest_quant.measure.tasks import (ItemAnswer, TaskAnswers, TaskItem, answer_items, compare, continuation_of,
                                        encode_pair, is_correct, normalise, predicted)

ITEMS = (
    TaskItem("t:1", "She walked into the", 0, ("room", "sea", "Bath", "because")),
    TaskItem("t:2", "Captain Wentworth and Anne", 1, ("unfortunately", "were", "extraordinarily unwilling")),
    TaskItem("t:3", "It was a cold day in", 2, ("spoke", "said", "November")),
)


def _plain_logprob(model, tokenizer, question: str, choice: str) -> float:
    """log p(choice | question): the whole sequence in one forward pass, summed in float64."""
    context, continuation = encode_pair(tokenizer, question, continuation_of(choice))
    ids = [tokenizer.bos_token_id] + context + continuation
    with torch.inference_mode():
        logprobs = model(input_ids=torch.tensor([ids])).logits[0].double().log_softmax(-1)
    start = len(ids) - len(continuation)
    return sum(float(logprobs[start - 1 + j, t]) for j, t in enumerate(continuation))


def test_choices_score_as_one_sequence_each_would(tiny):
    model, tokenizer = tiny
    answers = answer_items(model, tokenizer, ITEMS, tokenizer.bos_token_id, 512)
    for item, answer in zip(ITEMS, answers.answers):
        expected = [_plain_logprob(model, tokenizer, item.question, c) for c in item.choices]
        assert answer.choice_logprobs == pytest.approx(expected, abs=2e-4)


def test_encode_pair_moves_trailing_spaces_and_splits_after_the_context(tiny):
    _, tokenizer = tiny
    context, continuation = encode_pair(tokenizer, "It was a cold day in ", "November")
    assert context + continuation == list(tokenizer("It was a cold day in November", add_special_tokens=False)["input_ids"])
    assert tokenizer.decode(continuation) == " November"


def test_acc_takes_the_highest_sum_and_acc_norm_the_highest_per_character():
    item = TaskItem("t:1", "q", 1, ("a", "longer"))
    answer = ItemAnswer((-1.0, -3.0))  # per character: -1.0 and -0.5
    assert predicted(item, answer, "acc") == 0 and not is_correct(item, answer, "acc")
    assert predicted(item, answer, "acc_norm") == 1 and is_correct(item, answer, "acc_norm")
    assert predicted(TaskItem("t:2", "q", 0, ("x", "y")), ItemAnswer((-2.0, -2.0)), "acc") == 0  # a tie: the first


def test_short_answers_match_exactly_or_normalised():
    item = TaskItem("t:1", "Who wrote Persuasion?", "Jane Austen", aliases=("Austen",))
    assert normalise("  The  Jane, Austen!") == "jane austen"
    assert is_correct(item, ItemAnswer(generated=" Jane Austen "), "acc")
    assert not is_correct(item, ItemAnswer(generated="jane austen."), "acc")
    assert is_correct(item, ItemAnswer(generated="jane austen."), "acc_norm")
    assert is_correct(item, ItemAnswer(generated="austen"), "acc_norm")


def test_short_answer_items_are_answered_by_greedy_generation(tiny):
    from pytest_quant.measure.generation import greedy_generate

    model, tokenizer = tiny
    item = TaskItem("t:1", "Anne Elliot was", "a")
    answers = answer_items(model, tokenizer, (item,), tokenizer.bos_token_id, 512)
    prompt = [tokenizer.bos_token_id] + list(tokenizer(item.question, add_special_tokens=False)["input_ids"])
    tokens = greedy_generate(model, tokenizer, [prompt], 16).token_ids[0]
    assert answers.answers[0].generated == tokenizer.decode(list(tokens), skip_special_tokens=True).strip("\n").split("\n")[0].strip()


def test_compare_counts_flips_each_way_and_keeps_the_first_side_by_side():
    items = tuple(TaskItem(f"t:{i}", f"q{i}", 0, ("yes", "no")) for i in range(6))
    right, wrong = ItemAnswer((-1.0, -2.0)), ItemAnswer((-2.0, -1.0))
    reference = TaskAnswers((right, right, right, wrong, wrong, right), 0.0)
    answers = TaskAnswers((right, wrong, wrong, right, wrong, right), 0.5)
    found = compare("toy", items, reference, answers)
    assert (found.acc.losses, found.acc.gains, found.acc.items) == (2, 1, 6)
    assert found.acc.reference_accuracy == pytest.approx(4 / 6) and found.acc.accuracy == pytest.approx(3 / 6)
    first = found.flips["acc"][0]
    assert (first.source, first.expected, first.reference, first.model, first.lost) == ("t:1", "yes", "yes", "no", True)
    assert [f.lost for f in found.flips["acc"]] == [True, True, False]
    with pytest.raises(ValueError):
        compare("toy", items[:5], reference, answers)
