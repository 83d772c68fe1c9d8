"""Calibration samples for GPTQ and AWQ: token windows cut from a text file or from question/answer pairs.

A source is a plain text file (the embedded Northanger Abbey slice by default), a ``.json`` file holding a
list of pairs, or a ``.jsonl`` file with one pair per line. A pair is ``{"question": ..., "answer": ...}``
or alpaca-style ``{"instruction": ..., "input": ..., "output": ...}``. The texts are tokenized, joined with
the tokenizer's end-of-text token and cut into non-overlapping windows of ``seq_len`` tokens; ``samples``
windows spread evenly over the stream are kept, so the same source always gives the same samples.
Imports no torch: the tokenizer is whatever object the caller passes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

DEFAULT_SAMPLES = 128
DEFAULT_SEQ_LEN = 512

# Keys of one pair, in the order they are written into its text.
QA_KEYS = ("question", "answer")
ALPACA_KEYS = ("instruction", "input", "output")


@dataclass(frozen=True)
class Calibration:
    """The token windows a quantizer sees, and where they came from."""

    source: str  # the file they were read from
    seq_len: int
    samples_requested: int
    windows: tuple[tuple[int, ...], ...]
    tokens_available: int

    @property
    def samples(self) -> int:
        return len(self.windows)

    def digest(self) -> str:
        """sha256 of the token windows: what the quantizer sees, independent of the file's name."""
        h = hashlib.sha256()
        h.update(f"seq_len={self.seq_len};samples={len(self.windows)};".encode())
        for window in self.windows:
            h.update(b"|")
            h.update(",".join(map(str, window)).encode())
        return h.hexdigest()

    def as_dataset(self) -> list[dict[str, list[int]]]:
        """GPTQModel's calibration format: one ``{"input_ids": [...]}`` row per window."""
        return [{"input_ids": list(w), "attention_mask": [1] * len(w)} for w in self.windows]


def read_texts(path: Path) -> list[str]:
    """The documents of one calibration file: the whole text of a text file, or one text per pair."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"calibration file {path}: no such file")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"calibration file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if not raw.strip():
        raise ValueError(f"calibration file {path}: the file is empty")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _pairs_from_jsonl(path, raw)
    if suffix == ".json":
        return _pairs_from_json(path, raw)
    return [raw]


def _pairs_from_json(path: Path, raw: str) -> list[str]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"calibration file {path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    if not isinstance(data, list):
        raise ValueError(
            f"calibration file {path}: expected a JSON list of question/answer objects, got a {type(data).__name__}"
        )
    if not data:
        raise ValueError(f"calibration file {path}: the list of question/answer pairs is empty")
    return [pair_text(item, f"{path}: item {i}") for i, item in enumerate(data)]


def _pairs_from_jsonl(path: Path, raw: str) -> list[str]:
    texts = []
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"calibration file {path}: line {lineno} is not valid JSON ({exc.msg})") from exc
        texts.append(pair_text(item, f"{path}: line {lineno}"))
    return texts


def pair_text(item: Any, where: str) -> str:
    """One pair as text: question and answer (or instruction, input and output) on their own lines."""
    if not isinstance(item, dict):
        raise ValueError(f"calibration file {where}: expected an object with question/answer fields, got {item!r:.80}")
    if "question" in item or "answer" in item:
        keys, required = QA_KEYS, QA_KEYS
    elif "instruction" in item or "output" in item:
        keys, required = ALPACA_KEYS, ("instruction", "output")
    else:
        raise ValueError(
            f"calibration file {where}: no 'question'/'answer' (or 'instruction'/'output') fields; "
            f"found {sorted(item)}"
        )
    parts = []
    for key in keys:
        value = item.get(key)
        if value is None and key not in required:
            continue
        if not isinstance(value, str) or (key in required and not value.strip()):
            raise ValueError(f"calibration file {where}: field {key!r} must be a non-empty string, got {value!r:.80}")
        if value.strip():
            parts.append(value.strip())
    return "\n".join(parts)


def check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"recipe field {name} must be a positive integer, got {value!r}")
    return value


def token_stream(texts: Sequence[str], tokenizer) -> list[int]:
    """The documents' tokens, joined by the end-of-text token where the tokenizer has one."""
    separator = getattr(tokenizer, "eos_token_id", None)
    stream: list[int] = []
    for i, text in enumerate(texts):
        if i and separator is not None:
            stream.append(int(separator))
        stream.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    return stream


def spread_windows(stream: Sequence[int], samples: int, seq_len: int) -> list[tuple[int, ...]]:
    """``samples`` non-overlapping windows of ``seq_len`` tokens spread evenly over the stream (fewer if short)."""
    available = len(stream) // seq_len
    count = min(samples, available)
    starts = [(i * available // count) * seq_len for i in range(count)] if count else []
    return [tuple(stream[s : s + seq_len]) for s in starts]


def build(source: Path, tokenizer, samples: int = DEFAULT_SAMPLES, seq_len: int = DEFAULT_SEQ_LEN) -> Calibration:
    """Read ``source`` and cut its calibration windows; a file too short for one window is an error."""
    samples = check_count("calibration_samples", samples)
    seq_len = check_count("calibration_seq_len", seq_len)
    stream = token_stream(read_texts(source), tokenizer)
    windows = spread_windows(stream, samples, seq_len)
    if not windows:
        raise ValueError(
            f"calibration file {source}: {len(stream)} tokens, fewer than one window of calibration_seq_len={seq_len}"
        )
    return Calibration(str(source), seq_len, samples, tuple(windows), len(stream))


def for_recipe(settings: dict, fallback: Path, tokenizer, samples: int = 32, seq_len: int = 256) -> Calibration:
    """A recipe's calibration: its own ``calibration`` file, else ``fallback`` (the session's text);
    ``calibration_samples`` / ``calibration_seq_len`` from the recipe, else these defaults."""
    source = settings.get("calibration") or fallback
    return build(Path(source), tokenizer, samples=settings.get("calibration_samples", samples),
                 seq_len=settings.get("calibration_seq_len", seq_len))
