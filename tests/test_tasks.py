"""pytest_quant.tasks: task files read and checked without a tokenizer; the embedded cloze task."""

from __future__ import annotations

import json

import pytest

from pytest_quant.tasks import CLOZE_CHOICES, CLOZE_ITEMS, cloze_task, read_tasks, task_digest


def _write(tmp_path, *lines: str):
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_multiple_choice_and_short_answer_lines_are_read(tmp_path):
    path = _write(tmp_path, json.dumps({"question": "Q1", "choices": ["a", "b"], "answer": "b"}), "",
                  json.dumps({"id": 7, "question": "Q2", "answer": ["Bath", "the city of Bath"]}))
    first, second = read_tasks(path)
    assert (first.answer, first.choices, first.source) == (1, ("a", "b"), f"{path}:1")
    assert (second.answer, second.aliases, second.is_choice, second.source) == ("Bath", ("the city of Bath",), False,
                                                                                 f"{path}:3")


@pytest.mark.parametrize("line, says", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "a JSON list, not an object"),
    ('{"question": "", "answer": "x"}', '"question" must be a non-empty string'),
    ('{"question": "q", "answer": ""}', "a short answer must be a non-empty string"),
    ('{"question": "q", "choices": ["a"], "answer": 0}', "at least 2 non-empty strings"),
    ('{"question": "q", "choices": ["a", "a"], "answer": 0}', "the same choice twice"),
    ('{"question": "q", "choices": ["a", "b"], "answer": 2}', "not an index of the 2 choices"),
    ('{"question": "q", "choices": ["a", "b"], "answer": "c"}', "is not one of the choices"),
    ('{"question": "q", "choices": ["a", "b"], "answer": true}', "a choice's index or its text"),
    ('{"question": "q", "answer": "x", "label": 1}', "unknown key(s) 'label'"),
])
def test_a_bad_line_is_named_by_file_and_line(tmp_path, line, says):
    path = _write(tmp_path, json.dumps({"question": "fine", "answer": "yes"}), line)
    with pytest.raises(ValueError) as error:
        read_tasks(path)
    assert str(error.value).startswith(f"{path}:2: ") and says in str(error.value)


def test_an_empty_or_binary_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no task items"):
        read_tasks(_write(tmp_path, "", "  "))
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_tasks(binary)


def test_the_cloze_task_is_the_next_word_among_words_of_its_paragraph():
    items = cloze_task()
    assert len(items) == CLOZE_ITEMS and items == cloze_task()  # the same text gives the same items
    from pytest_quant.models import embedded_eval_text

    text = embedded_eval_text().read_text(encoding="utf-8")
    for item in items[:50]:
        assert len(item.choices) == CLOZE_CHOICES and len(set(item.choices)) == CLOZE_CHOICES
        answer = item.choices[item.answer]
        assert f"{item.question} {answer}" in " ".join(text.split())  # the passage is followed by its answer
        assert len({c[0].isupper() for c in item.choices}) == 1  # no capital letter gives the answer away
    assert len({i.answer for i in items}) == CLOZE_CHOICES  # the answer's place is shuffled


def test_the_digest_changes_with_any_item():
    items = cloze_task()
    assert task_digest(items) == task_digest(cloze_task())
    assert task_digest(items[:-1]) != task_digest(items)
