"""Task items for ``task_accuracy``: a ``--quant-tasks`` JSONL file, read and checked at start-up without a
tokenizer (a bad line is a usage error naming ``file:line``), or the embedded cloze task written from the held-out
text (no copied data set).

A line of the file is one JSON object: multiple choice ``{"question": ..., "choices": [...], "answer": <index or
the choice's text>}``, or short answer ``{"question": ..., "answer": "<text>" or ["<text>", "<also accepted>"]}``.
An ``"id"`` is allowed and ignored; blank lines are skipped.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from .jsonl import json_object
from .measure.tasks import TaskItem

KEYS = frozenset({"question", "choices", "answer", "id"})
HELP = ('each line of a --quant-tasks file must be a JSON object with "question" (a non-empty string) and "answer"; '
        'multiple choice adds "choices" (a list of at least 2 distinct non-empty strings) and gives "answer" as an '
        'index into it or as one of them; a short answer gives "answer" as a non-empty string or a list of them')
# The embedded cloze task: the next word of a passage among 4 words of the same paragraph.
CLOZE_ITEMS = 400
CLOZE_CHOICES = 4
CLOZE_MIN_CONTEXT_WORDS = 12
CLOZE_CONTEXT_WORDS = 16  # at most: the passage ends this many words before the answer (a short sequence to score)
CLOZE_MIN_PARAGRAPH_WORDS = 30
CLOZE_SEED = 20261201
CLOZE_SOURCE = "cloze"


def tasks_option(value: str):
    """--quant-tasks: a task file (read and checked now: a bad line is named as file:line) or ``lm-eval:...``
    (``lmeval_tasks.LmEvalSpec``: its YAML files named now, its documents checked by ``startup``)."""
    from .lmeval_tasks import is_lm_eval, parse_spec

    if is_lm_eval(value):
        return parse_spec(value)
    path = Path(value).expanduser()
    read_tasks(path)
    return path


def read_tasks(path) -> tuple[TaskItem, ...]:
    """The items of a task file; ``ValueError`` naming ``file:line`` and what is accepted for a bad line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            items.append(_item(json_object(line, f"{path}:{number}", HELP), f"{path}:{number}"))
    if not items:
        raise ValueError(f"{path}: no task items; {HELP}")
    return tuple(items)


def _text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _item(value: dict, where: str) -> TaskItem:
    unknown = sorted(set(value) - KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; accepted: "
                         f"{', '.join(sorted(KEYS))}")
    question, answer = value.get("question"), value.get("answer")
    if not _text(question):
        raise ValueError(f"{where}: \"question\" must be a non-empty string, got {question!r}; {HELP}")
    if "choices" not in value:
        accepted = answer if isinstance(answer, list) else [answer]
        if not accepted or not all(_text(a) for a in accepted):
            raise ValueError(f"{where}: a short answer must be a non-empty string (or a list of them), got {answer!r}; "
                             f"{HELP}")
        return TaskItem(where, question, accepted[0], aliases=tuple(accepted[1:]))
    choices = value["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(_text(c) for c in choices):
        raise ValueError(f"{where}: \"choices\" must be a list of at least 2 non-empty strings, got {choices!r}")
    if len(set(choices)) != len(choices):
        raise ValueError(f"{where}: \"choices\" holds the same choice twice: {choices!r}")
    if isinstance(answer, bool) or not isinstance(answer, (int, str)):
        raise ValueError(f"{where}: \"answer\" must be a choice's index or its text, got {answer!r}")
    if isinstance(answer, str):
        if answer not in choices:
            raise ValueError(f"{where}: \"answer\" {answer!r} is not one of the choices {choices!r}")
        answer = choices.index(answer)
    if not 0 <= answer < len(choices):
        raise ValueError(f"{where}: \"answer\" {answer} is not an index of the {len(choices)} choices (0 to "
                         f"{len(choices) - 1})")
    return TaskItem(where, question, answer, tuple(choices))


def _core(word: str) -> str | None:
    """A word without its trailing punctuation, when what is left is letters only."""
    core = word.rstrip(",.;:!?\"'")
    return core if core.isalpha() and len(core) >= 3 else None


def cloze_task(path: Path | None = None, items: int = CLOZE_ITEMS) -> tuple[TaskItem, ...]:
    """Cloze items from the held-out text: a passage of a paragraph (the ``CLOZE_CONTEXT_WORDS`` words before a
    word at least ``CLOZE_MIN_CONTEXT_WORDS`` words in) and its next word among ``CLOZE_CHOICES`` words of the same paragraph of the
    same capitalisation, so that neither the topic nor a capital letter gives the answer away. Taken from the
    last three quarters of the text (the perplexity windows read its start), the same text always gives the same items."""
    if path is None:
        from .models import embedded_eval_text

        path = embedded_eval_text()
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    rng = random.Random(CLOZE_SEED)
    paragraphs = [p.split() for p in text[len(text) // 4:].split("\n\n")]
    paragraphs = [words for words in paragraphs if len(words) >= CLOZE_MIN_PARAGRAPH_WORDS]
    out: list[TaskItem] = []
    for number, words in enumerate(paragraphs):
        if len(out) == items:
            break
        cores = {c for c in map(_core, words) if c}
        spots = [i for i in range(CLOZE_MIN_CONTEXT_WORDS, len(words)) if _core(words[i])]
        rng.shuffle(spots)
        for spot in spots:
            answer = _core(words[spot])
            others = sorted(c for c in cores if c.lower() != answer.lower() and c[0].isupper() == answer[0].isupper())
            if len(others) >= CLOZE_CHOICES - 1:
                choices = rng.sample(others, CLOZE_CHOICES - 1) + [answer]
                rng.shuffle(choices)
                passage = " ".join(words[max(0, spot - CLOZE_CONTEXT_WORDS):spot])
                out.append(TaskItem(f"{CLOZE_SOURCE}:{path.name}:{number + 1}", passage,
                                    choices.index(answer), tuple(choices)))
                break
    if len(out) < items:
        raise ValueError(f"{path} gives {len(out)} cloze items; asked for {items}")
    return tuple(out)


def task_digest(items, salt: str = "") -> str:
    """A hash of the items' content (what a cached reference's answers were given for), and of ``salt`` (what
    scored them, where not this package: an lm-eval task's config)."""
    digest = hashlib.sha256(salt.encode())
    for item in items:
        digest.update(json.dumps([item.question, list(item.choices), item.answer, list(item.aliases)]).encode())
    return digest.hexdigest()
