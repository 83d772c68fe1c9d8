"""measure.tokens: the eval text's tokens, kept across the sessions of one process, always what the tokenizer says."""

from __future__ import annotations

import pytest

from pytest_quant.measure import tokens


@pytest.fixture
def tokenizer():
    from transformers import AutoTokenizer

    from pytest_quant.models import TINY_DIR

    return AutoTokenizer.from_pretrained(TINY_DIR)


def plain(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def test_kept_tokens_are_the_tokenizers_and_a_caller_cannot_change_them(tokenizer, monkeypatch) -> None:
    monkeypatch.setattr(tokens, "_TOKENS", {})
    text = "The quick brown fox jumps over the lazy dog.\n\nA second paragraph."
    first = tokens.tokenize_text(tokenizer, text)
    assert first == plain(tokenizer, text) and len(tokens._TOKENS) == 1
    first.append(-1)  # the caller's list is its own
    assert tokens.tokenize_text(tokenizer, text) == plain(tokenizer, text)


def test_another_text_or_tokenizer_definition_is_tokenized_afresh(tokenizer, monkeypatch) -> None:
    monkeypatch.setattr(tokens, "_TOKENS", {})
    monkeypatch.setattr(tokens, "_TOKENS_KEPT", 2)
    assert tokens.tokenize_text(tokenizer, "one text") == plain(tokenizer, "one text")
    assert tokens.tokenize_text(tokenizer, "another text") == plain(tokenizer, "another text")
    tokenizer.add_tokens(["quickbrownfox"])  # the same object, another definition
    assert tokens.tokenize_text(tokenizer, "a quickbrownfox") == plain(tokenizer, "a quickbrownfox")
    assert tokens.tokenize_text(tokenizer, "one text") == plain(tokenizer, "one text")
    assert len(tokens._TOKENS) == 2  # the oldest went


def test_a_tokenizer_without_a_serialized_definition_is_asked_every_time(monkeypatch) -> None:
    monkeypatch.setattr(tokens, "_TOKENS", {})
    calls = []

    def tokenizer(text, **kwargs):
        calls.append(kwargs)
        return {"input_ids": [len(text)]}

    assert tokens.tokenize_text(tokenizer, "abc") == [3] and tokens.tokenize_text(tokenizer, "abc") == [3]
    assert calls == [{"add_special_tokens": False, "verbose": False}] * 2 and tokens._TOKENS == {}
