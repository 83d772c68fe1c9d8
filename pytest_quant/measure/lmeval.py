"""An lm-eval task run by lm-eval on the already loaded model: ``HFLM(pretrained=model, tokenizer=tokenizer)``,
``evaluate(..., log_samples=True)``, and each logged sample's per-choice log-likelihoods taken as the item's
answer, so the paired comparison (``measure.tasks.compare``) sees lm-eval's own scoring of every item.

lm-eval's per-item ``acc`` and ``acc_norm`` are checked against what those log-likelihoods give under
``measure.tasks.is_correct``: a task whose own scoring differs (a custom ``process_results``) is refused with the
item that differs rather than gated on another score than the one lm-eval reports.
"""

from __future__ import annotations

import logging
import time

from .tasks import SCORES, ItemAnswer, TaskAnswers, is_correct

BATCH_SIZE = 32


def runs_on(model) -> str | None:
    """Why lm-eval's HFLM cannot drive ``model`` (None: it can): it needs a torch module with a config."""
    import torch

    if isinstance(model, torch.nn.Module) and hasattr(model, "config"):
        return None
    return f"lm-eval's HFLM runs torch models; this runtime's model is a {type(model).__name__}"


def answer_with_lm_eval(model, tokenizer, tasks, items) -> TaskAnswers:
    """Every item of ``tasks`` ((name, lm-eval Task), freshly loaded by ``lmeval_tasks.load_tasks``; ``items`` as
    ``lmeval_tasks.read_items`` gave them, "...:<name>:<document>") answered through lm-eval."""
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    for name in ("lm-eval", "lm_eval"):  # its INFO lines and per-metric notes, once per model
        logging.getLogger(name).setLevel(logging.WARNING)
    start = time.perf_counter()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=BATCH_SIZE)
    found = evaluate(lm, {"tasks": dict(tasks), "groups": {}, "group_map": {}}, log_samples=True, bootstrap_iters=0)
    answers = []
    for name, _ in tasks:
        samples = sorted(found["samples"][name], key=lambda s: s["doc_id"])
        answers += [(name, s) for s in samples]
    if len(answers) != len(items):
        raise RuntimeError(f"pytest-quant: lm-eval answered {len(answers)} documents of {', '.join(n for n, _ in tasks)};"
                           f" {len(items)} were read at start-up")
    out = []
    for item, (name, sample) in zip(items, answers):
        if not item.source.endswith(f":{name}:{sample['doc_id']}"):
            raise RuntimeError(f"pytest-quant: lm-eval's sample {name}:{sample['doc_id']} is not item {item.source}")
        answer = ItemAnswer(tuple(float(r[0]) for r in sample["filtered_resps"]))
        for score in SCORES:
            if score in sample and bool(sample[score]) != is_correct(item, answer, score):
                raise RuntimeError(f"pytest-quant: {item.source}: lm-eval scores it {score}={sample[score]}, its "
                                   f"choices' log-likelihoods give {is_correct(item, answer, score)}: the task's own "
                                   "scoring is not multiple choice by log-likelihood, which task_accuracy compares")
        out.append(answer)
    return TaskAnswers(tuple(out), time.perf_counter() - start)
