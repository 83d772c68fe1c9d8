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
    windows = inputs.windows(pair.model, live.tokenizer)
    progress(f"{pair.id}: answering {len(items)} items of {inputs.task_name}")
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
