"""Task accuracy: a model answers every item of a task, and its answers are compared item by item with the
reference's (``measure.paired``).

Multiple-choice items are scored as lm-evaluation-harness scores ``multiple_choice`` tasks: each choice is a
continuation of the question (joined by one space, lm-eval's ``target_delimiter``), tokenized with the question
and split as lm-eval's ``_encode_pair`` does; the answer is the choice of highest summed log-likelihood
(``acc``) or of highest log-likelihood per character of the choice (``acc_norm``). Short-answer items are
answered by greedy generation (up to the first line break): ``acc`` is an exact match (surrounding whitespace
aside), ``acc_norm`` a normalised one (SQuAD's: lower case, no punctuation, no articles, single spaces).
"""

from __future__ import annotations

import re
import string
import time
from dataclasses import dataclass

from .paired import PairedAccuracy, paired_accuracy

SCORES = ("acc", "acc_norm")
MAX_NEW_TOKENS = 16  # a short answer's greedy generation
FLIPS_KEPT = 5  # the first flipped items kept for the report, per score
SEQUENCES_PER_BATCH = 64


@dataclass(frozen=True)
class TaskItem:
    source: str  # where it was read, "file:line"
    question: str
    answer: int | str  # the correct choice's index, or the short answer
    choices: tuple[str, ...] = ()  # empty: a short-answer item
    aliases: tuple[str, ...] = ()  # other accepted short answers

    @property
    def is_choice(self) -> bool:
        return bool(self.choices)

    def expected(self) -> str:
        return self.choices[self.answer] if self.is_choice else str(self.answer)


@dataclass(frozen=True)
class ItemAnswer:
    """What a model answered: the summed log-likelihood of each choice, or the text it generated."""

    choice_logprobs: tuple[float, ...] = ()
    generated: str | None = None


@dataclass(frozen=True)
class TaskAnswers:
    answers: tuple[ItemAnswer, ...]
    seconds: float


def normalise(text: str) -> str:
    """SQuAD's answer normalisation: lower case, punctuation and articles removed, whitespace collapsed."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def predicted(item: TaskItem, answer: ItemAnswer, score: str) -> int | str:
    """The choice's index (first of equal scores) or the generated text."""
    if not item.is_choice:
        return answer.generated or ""
    values = answer.choice_logprobs
    if score == "acc_norm":
        values = [v / max(1, len(c)) for v, c in zip(values, item.choices)]
    return max(range(len(values)), key=lambda i: (values[i], -i))


def is_correct(item: TaskItem, answer: ItemAnswer, score: str) -> bool:
    guess = predicted(item, answer, score)
    if item.is_choice:
        return guess == item.answer
    accepted = (str(item.answer),) + item.aliases
    if score == "acc_norm":
        return normalise(str(guess)) in {normalise(a) for a in accepted}
    return str(guess).strip() in {a.strip() for a in accepted}


@dataclass(frozen=True)
class FlippedItem:
    source: str
    question: str
    expected: str
    reference: str  # what the reference answered
    model: str
    lost: bool  # the reference was right and the model wrong (else the other way round)


@dataclass(frozen=True)
class TaskMeasurement:
    """A model's answers against the reference's on one task: the paired figures per score."""

    task: str  # the task file's name
    items: int
    choice_items: int
    acc: PairedAccuracy
    acc_norm: PairedAccuracy
    flips: dict  # score -> tuple[FlippedItem, ...] (the first FLIPS_KEPT)
    seconds: float

    def score(self, name: str) -> PairedAccuracy:
        return self.acc_norm if name == "acc_norm" else self.acc


def _shown(item: TaskItem, guess: int | str) -> str:
    return item.choices[guess] if item.is_choice else str(guess)


def compare(task: str, items, reference: TaskAnswers, answers: TaskAnswers) -> TaskMeasurement:
    """The paired figures of ``answers`` against ``reference`` over ``items`` (both answered every item)."""
    if not len(items) == len(reference.answers) == len(answers.answers):
        raise ValueError(f"{len(items)} items, {len(reference.answers)} reference answers, {len(answers.answers)} answers")
    paired, flips = {}, {}
    for score in SCORES:
        ref_ok = [is_correct(i, a, score) for i, a in zip(items, reference.answers)]
        ok = [is_correct(i, a, score) for i, a in zip(items, answers.answers)]
        paired[score] = paired_accuracy(ref_ok, ok)
        flips[score] = tuple(
            FlippedItem(item.source, item.question, item.expected(), _shown(item, predicted(item, r, score)),
                        _shown(item, predicted(item, a, score)), lost=was)
            for item, r, a, was, now in zip(items, reference.answers, answers.answers, ref_ok, ok) if was != now
        )[:FLIPS_KEPT]
    return TaskMeasurement(task, len(items), sum(i.is_choice for i in items), paired["acc"], paired["acc_norm"], flips,
                           answers.seconds)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's ``_encode_pair``: trailing spaces of the context move to the continuation; the whole is tokenized
    and the continuation is what follows the context's own tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = list(tokenizer(context + continuation, add_special_tokens=False)["input_ids"])
    head = list(tokenizer(context, add_special_tokens=False)["input_ids"])
    return whole[:len(head)], whole[len(head):]


def continuation_of(choice: str) -> str:
    return choice if choice[:1].isspace() else " " + choice


def _rows(tokenizer, items, prefix_token: int, max_positions: int | None):
    """The forward rows that score every choice, each with its jobs (item, choice, first position, targets).
    The choices of an item share their context's tokens, so a one-token choice needs no row of its own: it is read
    at the context's last position of any row of its item (88% of the embedded cloze task's choices)."""
    rows = []
    for index, item in enumerate(items):
        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        for number, choice in enumerate(item.choices):
            context, continuation = encode_pair(tokenizer, item.question, continuation_of(choice))
            if not continuation:  # merged into the context's last token: scored on its own
                continuation = list(tokenizer(continuation_of(choice), add_special_tokens=False)["input_ids"])
            groups.setdefault(tuple([prefix_token] + context), []).append((number, continuation))
        for context, members in groups.items():
            single = [(index, n, len(context) - 1, c) for n, c in members if len(c) == 1]
            multi = [(n, c) for n, c in members if len(c) > 1]
            if not multi:
                rows.append((list(context), single))
            for k, (n, c) in enumerate(multi):
                rows.append((list(context) + c[:-1], [(index, n, len(context) - 1, c)] + (single if k == 0 else [])))
    if max_positions is not None:  # lm-eval truncates on the left
        rows = [(ids[-max_positions:], [(i, n, max(0, p - max(0, len(ids) - max_positions)), c) for i, n, p, c in jobs])
                for ids, jobs in rows]
    return sorted(rows, key=lambda row: len(row[0]))  # batches of nearly equal lengths: little padding


def answer_items(model, tokenizer, items, prefix_token: int, max_positions: int | None = None) -> TaskAnswers:
    """Every item answered by ``model``: choices scored in batches of rows (right-padded: a causal model's real
    positions never see the padding), short answers generated greedily one at a time."""
    import torch

    from .generation import greedy_generate
    from .quality import _model_device

    device = _model_device(model)
    rows = _rows(tokenizer, items, prefix_token, max_positions)
    scores: dict[tuple[int, int], float] = {}
    start = time.perf_counter()
    with torch.inference_mode():
        for at in range(0, len(rows), SEQUENCES_PER_BATCH):
            batch = rows[at:at + SEQUENCES_PER_BATCH]
            inputs = torch.zeros((len(batch), max(len(ids) for ids, _ in batch)), dtype=torch.long)
            for row, (ids, _) in enumerate(batch):
                inputs[row, :len(ids)] = torch.tensor(ids)
            logits = model(input_ids=inputs.to(device), use_cache=False).logits
            for row, (_, jobs) in enumerate(batch):
                for index, number, first, targets in jobs:
                    logprobs = logits[row, first:first + len(targets)].float().log_softmax(dim=-1)
                    wanted = torch.tensor(targets, device=logprobs.device)[:, None]
                    scores[(index, number)] = float(logprobs.gather(1, wanted).sum(dtype=torch.float64))
            del logits
    answers = []
    for index, item in enumerate(items):
        if item.is_choice:
            answers.append(ItemAnswer(tuple(scores[(index, n)] for n in range(len(item.choices)))))
            continue
        prompt = [prefix_token] + list(tokenizer(item.question, add_special_tokens=False)["input_ids"])
        generated = greedy_generate(model, tokenizer, [prompt], MAX_NEW_TOKENS).token_ids[0]
        text = tokenizer.decode(list(generated), skip_special_tokens=True)
        answers.append(ItemAnswer(generated=text.strip("\n").split("\n")[0].strip()))
    return TaskAnswers(tuple(answers), time.perf_counter() - start)
