"""The task items answered by a live model, against its reference's answers (the ``tasks`` need)."""

from __future__ import annotations

from typing import Callable

from .inputs import Inputs
from .ledger import Ledger
from .live import LiveModel


def measure_tasks(live: LiveModel, inputs: Inputs, ledger: Ledger, reference, progress: Callable[[str], None]):
    """Answer every item; record the paired figures against the reference's answers (the reference: against its
    own). Returns the answers when ``live`` is the reference (kept with it), else None. A pre-quantized checkpoint
    has no reference to compare with: nothing is recorded and its task_accuracy check says so."""
    from ..measure.tasks import answer_items, compare

    pair = live.pair
    if not pair.recipe.is_reference and reference is None:
        return None
    items = inputs.tasks()
    windows = inputs.windows(pair.model, live.tokenizer) if inputs.lm_eval is None else None
    progress(f"{pair.id}: answering {len(items)} items of {inputs.task_name}")
    if inputs.lm_eval is not None:
        answers = _lm_eval_answers(live, inputs, items)
    else:
        answers = answer_items(live.model, live.tokenizer, items, windows.prefix_token, windows.context_tokens)
    expected = answers if pair.recipe.is_reference else reference.tasks
    if expected is None:
        raise RuntimeError(f"pytest-quant: the reference of {pair.model.name} answered no task items this session; a "
                           "task_accuracy marker added after collection cannot be compared")
    found = compare(inputs.task_name, items, expected, answers)
    ledger.record(pair, tasks=found)
    acc = found.acc
    progress(f"{pair.id}: {inputs.task_name} accuracy {100 * acc.accuracy:.1f}% ({acc.losses} items lost, "
             f"{acc.gains} gained against the reference's {100 * acc.reference_accuracy:.1f}%; {found.seconds:.1f} s)")
    return answers if pair.recipe.is_reference else None


def _lm_eval_answers(live: LiveModel, inputs: Inputs, items):
    """lm-eval runs its task on the live model; a runtime it cannot drive skips the test with the reason."""
    import pytest

    from ..lmeval_tasks import load_tasks
    from ..measure.lmeval import answer_with_lm_eval, runs_on

    why = runs_on(live.model)
    if why is not None:
        pytest.skip(f"task_accuracy: {live.pair.id}: {inputs.task_name}: {why}")
    return answer_with_lm_eval(live.model, live.tokenizer, load_tasks(inputs.lm_eval), items)
