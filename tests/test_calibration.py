"""Calibration windows from the embedded text, text files and JSON/JSONL question/answer pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_quant import calibration as calib
from pytest_quant.models import TINY_DIR, embedded_calibration_text

PAIRS = [
    {"question": "Who wrote Northanger Abbey?", "answer": "Jane Austen wrote it, and it was published in 1817."},
    {"question": "Where does Catherine Morland go first?", "answer": "She goes to Bath with the Allens."},
    {"question": "What does Henry Tilney read?", "answer": "He reads novels, and he says so without shame."},
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY_DIR)


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_embedded_text_gives_full_windows_spread_over_the_text(tokenizer) -> None:
    cal = calib.build(embedded_calibration_text(), tokenizer, samples=16, seq_len=256)
    stream = calib.token_stream(calib.read_texts(embedded_calibration_text()), tokenizer)
    assert cal.samples == 16 and cal.seq_len == 256 and cal.tokens_available == len(stream)
    assert all(len(w) == 256 for w in cal.windows)
    starts = [i for w in cal.windows for i in range(0, len(stream) - 255, 256) if tuple(stream[i : i + 256]) == w]
    available = len(stream) // 256
    assert starts == [(i * available // 16) * 256 for i in range(16)]
    # Spread over the whole text, not the first 16 windows in a row.
    assert starts[-1] > len(stream) * 3 // 4
    assert cal.as_dataset()[0] == {"input_ids": list(cal.windows[0]), "attention_mask": [1] * 256}


def test_same_source_same_digest_and_any_change_changes_it(tokenizer, tmp_path: Path) -> None:
    base = calib.build(embedded_calibration_text(), tokenizer, 8, 128)
    assert base.digest() == calib.build(embedded_calibration_text(), tokenizer, 8, 128).digest()
    copy = write(tmp_path / "copy.txt", embedded_calibration_text().read_text(encoding="utf-8"))
    assert calib.build(copy, tokenizer, 8, 128).digest() == base.digest()  # the tokens count, not the file name
    others = {
        calib.build(embedded_calibration_text(), tokenizer, 9, 128).digest(),
        calib.build(embedded_calibration_text(), tokenizer, 8, 64).digest(),
        calib.build(write(tmp_path / "other.txt", copy.read_text(encoding="utf-8")[1000:]), tokenizer, 8, 128).digest(),
    }
    assert base.digest() not in others and len(others) == 3


def test_a_short_source_gives_fewer_samples_than_asked(tokenizer) -> None:
    cal = calib.build(embedded_calibration_text(), tokenizer, samples=10_000, seq_len=512)
    assert cal.samples == cal.tokens_available // 512 < 10_000
    assert len(set(cal.windows)) == cal.samples


def test_json_pairs_are_joined_with_end_of_text(tokenizer, tmp_path: Path) -> None:
    path = write(tmp_path / "pairs.json", json.dumps(PAIRS))
    texts = calib.read_texts(path)
    assert texts[0] == "Who wrote Northanger Abbey?\nJane Austen wrote it, and it was published in 1817."
    stream = calib.token_stream(texts, tokenizer)
    assert stream.count(tokenizer.eos_token_id) == len(PAIRS) - 1
    cal = calib.build(path, tokenizer, samples=4, seq_len=16)
    assert cal.samples == len(stream) // 16 and cal.source == str(path)


def test_jsonl_pairs_and_alpaca_fields(tokenizer, tmp_path: Path) -> None:
    lines = [json.dumps(PAIRS[0]), "", json.dumps({"instruction": "Name the heroine.", "input": "Northanger Abbey",
                                                  "output": "Catherine Morland."})]
    path = write(tmp_path / "pairs.jsonl", "\n".join(lines) + "\n")
    texts = calib.read_texts(path)
    assert texts == [
        "Who wrote Northanger Abbey?\nJane Austen wrote it, and it was published in 1817.",
        "Name the heroine.\nNorthanger Abbey\nCatherine Morland.",
    ]
    assert calib.build(path, tokenizer, samples=2, seq_len=8).samples == 2


def test_plain_text_file(tokenizer, tmp_path: Path) -> None:
    path = write(tmp_path / "notes.md", "It is a truth universally acknowledged. " * 40)
    assert calib.read_texts(path) == [path.read_text(encoding="utf-8")]
    assert calib.build(path, tokenizer, samples=3, seq_len=32).samples == 3


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("empty.txt", "  \n", "the file is empty"),
        ("latin1.txt", "caf\xe9 au lait".encode("latin-1"), "not UTF-8 text"),
        ("broken.json", '[{"question": "a", "answer": "b"', "not valid JSON"),
        ("object.json", '{"question": "a", "answer": "b"}', "expected a JSON list of question/answer objects, got a dict"),
        ("nolist.json", "[]", "the list of question/answer pairs is empty"),
        ("scalar.json", '["just a string"]', "item 0: expected an object"),
        ("noanswer.json", '[{"question": "a", "answer": "b"}, {"question": "c"}]', "item 1: field 'answer' must be a non-empty string"),
        ("blank.json", '[{"question": "a", "answer": "  "}]', "item 0: field 'answer' must be a non-empty string"),
        ("fields.json", '[{"prompt": "a", "completion": "b"}]', "no 'question'/'answer'"),
        ("bad.jsonl", '{"question": "a", "answer": "b"}\n{"question": oops}\n', "line 2 is not valid JSON"),
        ("noout.jsonl", '{"instruction": "a"}\n', "line 1: field 'output' must be a non-empty string"),
    ],
)
def test_bad_files_name_the_path_and_the_problem(tmp_path: Path, name: str, content, problem: str) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(ValueError) as info:
        calib.read_texts(path)
    assert str(path) in str(info.value) and problem in str(info.value)


def test_missing_file_and_too_short_text(tokenizer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"calibration file .*nowhere\.txt: no such file"):
        calib.read_texts(tmp_path / "nowhere.txt")
    short = write(tmp_path / "short.txt", "Only a few words.")
    with pytest.raises(ValueError, match=r"short\.txt: \d+ tokens, fewer than one window of calibration_seq_len=512"):
        calib.build(short, tokenizer, samples=4, seq_len=512)


@pytest.mark.parametrize("value", [0, -1, True, "8", 2.0])
def test_counts_must_be_positive_integers(tokenizer, value) -> None:
    with pytest.raises(ValueError, match="calibration_samples must be a positive integer"):
        calib.build(embedded_calibration_text(), tokenizer, samples=value, seq_len=64)
    with pytest.raises(ValueError, match="calibration_seq_len must be a positive integer"):
        calib.build(embedded_calibration_text(), tokenizer, samples=4, seq_len=value)
