"""What the cached reference keeps beside its predictions: its layer data (``measure.layers``) and its answers to a
task's items (``measure.tasks``), each in its own file next to the reference's, under the reference's key.

A stale entry is never used: the layer file must hold this run's sample tokens and the task file this run's items
(a hash of their content); every figure a gate reads is derived from the stored raw answers (per-choice
log-likelihoods, generated texts), never stored itself, and a file whose arrays or answers do not fit the items is
measured again. As with the reference itself, an entry forged consistently by someone who can write the cache is
as trusted as that cache.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

LAYERS_FORMAT = "pytest-quant reference layers 1"
TASKS_FORMAT = "pytest-quant reference task answers 1"


def layers_path(reference_path: Path) -> Path:
    """A safetensors file, named apart from the references' own ``*.safetensors`` (one per cached reference)."""
    return reference_path.with_name(f"{reference_path.stem}-layers.st")


def tasks_path(reference_path: Path, digest: str) -> Path:
    return reference_path.with_name(f"{reference_path.stem}-tasks-{digest[:16]}.json")


def save_layers(path: Path, key: str, layers) -> None:
    import torch
    from safetensors.torch import save

    from ..atomic import atomic_write

    tensors = {"input_ids": torch.tensor(layers.input_ids, dtype=torch.int64),
               "inputs": layers.inputs.contiguous(), "outputs": layers.outputs.contiguous(),
               "head_input": layers.head_input.contiguous(), "head_logits": layers.head_logits.contiguous()}
    header = {"format": LAYERS_FORMAT, "key": key, "names": json.dumps(list(layers.names))}
    atomic_write(path, save(tensors, metadata=header))


def load_layers(path: Path, key: str, sample_ids: tuple[int, ...]):
    """(LayerReference, None), or (None, why it cannot be used); (None, None) when there is no file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    from ..measure.layers import LayerReference

    if not path.is_file():
        return None, None
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        if header.get("format") != LAYERS_FORMAT or header.get("key") != key:
            return None, "another format or key"
        t = load_file(str(path))
        names = tuple(json.loads(header["names"]))
        found = LayerReference(tuple(int(i) for i in t["input_ids"].tolist()), names, t["inputs"], t["outputs"],
                               t["head_input"], t["head_logits"])
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        return None, f"unreadable ({exc})"
    if found.input_ids != tuple(sample_ids):
        return None, "its sample tokens are not this run's"
    tokens, layers = len(sample_ids), len(names)
    shapes_fit = (found.inputs.shape[:2] == (layers, tokens) and found.outputs.shape == found.inputs.shape
                  and found.head_input.shape[0] == tokens and found.head_logits.shape[0] <= tokens)
    if not shapes_fit:
        return None, "its arrays do not fit together"
    if not all(bool(x.float().isfinite().all()) for x in (found.inputs, found.outputs, found.head_input,
                                                            found.head_logits)):
        return None, "its arrays are not all finite"
    return found, None


def save_tasks(path: Path, key: str, digest: str, answers) -> None:
    from ..atomic import atomic_write

    rows = [{"choice_logprobs": list(a.choice_logprobs)} if a.generated is None else {"generated": a.generated}
            for a in answers.answers]
    body = {"format": TASKS_FORMAT, "key": key, "items": digest, "seconds": answers.seconds, "answers": rows}
    atomic_write(path, json.dumps(body).encode())


def load_tasks(path: Path, key: str, digest: str, items):
    """(TaskAnswers, None), or (None, why it cannot be used); (None, None) when there is no file."""
    from ..measure.tasks import ItemAnswer, TaskAnswers

    if not path.is_file():
        return None, None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        if body.get("format") != TASKS_FORMAT or body.get("key") != key or body.get("items") != digest:
            return None, "another format, key or task"
        rows = body["answers"]
        if len(rows) != len(items):
            return None, f"{len(rows)} answers for {len(items)} items"
        answers = []
        for item, row in zip(items, rows):
            if item.is_choice:
                values = tuple(float(v) for v in row["choice_logprobs"])
                if len(values) != len(item.choices) or not all(math.isfinite(v) and v <= 0 for v in values):
                    return None, f"the answer to {item.source} is not one finite log-likelihood <= 0 per choice"
                answers.append(ItemAnswer(values))
            else:
                if not isinstance(row.get("generated"), str):
                    return None, f"the answer to {item.source} is not a generated text"
                answers.append(ItemAnswer(generated=row["generated"]))
        return TaskAnswers(tuple(answers), float(body.get("seconds", 0.0))), None
    except (OSError, KeyError, TypeError, ValueError, AttributeError) as exc:
        return None, f"unreadable ({exc})"


@dataclass
class Extras:
    tasks: object = None  # measure.tasks.TaskAnswers
    layers: object = None  # measure.layers.LayerReference
    figures: dict = field(default_factory=dict)  # what the ledger records of the reference from them


def save_extras(path: Path, key: str, data, inputs) -> None:
    """Write the reference's layer data and task answers beside its cached predictions (``path``)."""
    if data.layers is not None:
        save_layers(layers_path(path), key, data.layers)
    if data.tasks is not None:
        digest = inputs.task_digest()
        save_tasks(tasks_path(path, digest), key, digest, data.tasks)


def restore_extras(path: Path, key: str, inputs, model, needs) -> tuple[Extras | None, str | None]:
    """What the cache holds beside the reference at ``path``, and the reference's figures from it; (None, why)
    when something this run needs (``needs``: "tasks", "layers") is missing or cannot be used."""
    from ..measure.layers import SAMPLE_TOKENS, LayerErrors
    from ..measure.tasks import compare

    out = Extras()
    sample = tuple(inputs.windows(model).windows[0].input_ids[:SAMPLE_TOKENS])
    out.layers, why = load_layers(layers_path(path), key, sample)
    if out.layers is None and "layers" in needs:
        return None, f"its layer data {why or 'is missing'}"
    if out.layers is not None:
        out.figures["layers"] = LayerErrors(skipped="the reference itself: the yardstick of every layer")
    if "tasks" in needs:
        items = inputs.tasks()
        digest = inputs.task_digest()
        out.tasks, why = load_tasks(tasks_path(path, digest), key, digest, items)
        if out.tasks is None:
            return None, f"its answers to {inputs.task_name} {why or 'are not cached'}"
        out.figures["tasks"] = compare(inputs.task_name, items, out.tasks, out.tasks)
    return out, None
