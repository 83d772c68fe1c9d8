"""The eval text's tokens, kept across the sessions of one process."""

from __future__ import annotations

import hashlib


def tokenize_text(tokenizer, text: str) -> list[int]:
    """The text's own tokens. No special tokens: the prefix token is the window's BOS, as in lm-eval.

    A process that runs several sessions (pytester, a notebook) tokenizes the same text with the same tokenizer
    once: the tokens are kept for the last few (tokenizer, text) pairs, keyed by the tokenizer's whole
    serialized definition and the text itself (a Hugging Face fast tokenizer; any other is tokenized each time).
    """
    key = _tokens_key(tokenizer, text)
    if key is not None and key in _TOKENS:
        return list(_TOKENS[key])
    tokens = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    if key is not None:
        if len(_TOKENS) >= _TOKENS_KEPT:
            del _TOKENS[next(iter(_TOKENS))]
        _TOKENS[key] = tuple(tokens)
    return tokens


_TOKENS: dict[tuple, tuple[int, ...]] = {}
_TOKENS_KEPT = 4


def _tokens_key(tokenizer, text: str) -> tuple | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    definition = hashlib.sha256(backend.to_str().encode()).hexdigest()
    return (type(tokenizer).__qualname__, definition, bool(getattr(tokenizer, "split_special_tokens", False)),
            hashlib.sha256(text.encode()).hexdigest())
