"""lm-eval tasks as ``task_accuracy``'s items: ``--quant-tasks=lm-eval:<task.yaml or task name>[,...]``, with
``--quant-lm-eval-include DIR`` for a folder of task YAMLs (its names are looked up first, then lm-eval's own).

Only ``multiple_choice`` tasks whose data lm-eval can load here (a local JSON/JSONL file through
``dataset_path: json`` and ``dataset_kwargs: {data_files: ...}``, or a dataset already in the local cache) are
accepted: each document becomes a ``TaskItem`` (its ``doc_to_text``, ``doc_to_choice`` and ``doc_to_target``),
checked at start-up; the task itself is run on the loaded model by lm-eval (``measure.lmeval``). lm-eval
(extra ``tasks``) is imported only when such a task is named.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, replace
from pathlib import Path

PREFIX = "lm-eval:"
INSTALL_HINT = "pip install 'pytest-quant[tasks]'"
YAML_SUFFIXES = (".yaml", ".yml")
ACCEPTED = ("lm-eval:<task.yaml>[,...] or lm-eval:<task name>[,...] (a task of --quant-lm-eval-include DIR or "
            "one of lm-eval's own)")


@dataclass(frozen=True)
class LmEvalSpec:
    """The lm-eval tasks named, in order: YAML files (absolute paths) and task names."""

    tasks: tuple[str, ...]
    include: Path | None = None  # --quant-lm-eval-include

    @property
    def name(self) -> str:
        return "lm-eval " + "+".join(Path(t).stem if t.endswith(YAML_SUFFIXES) else t for t in self.tasks)

    def with_include(self, include: Path | None) -> "LmEvalSpec":
        return replace(self, include=include)

    def __str__(self) -> str:
        return PREFIX + ",".join(self.tasks)


def is_lm_eval(value) -> bool:
    return isinstance(value, LmEvalSpec) or (isinstance(value, str) and value.strip().startswith(PREFIX))


def fold_include(tasks, include: Path | None):
    """--quant-tasks with --quant-lm-eval-include folded into its lm-eval spec (which alone may use it)."""
    if include is None:
        return tasks
    if not isinstance(tasks, LmEvalSpec):
        import pytest

        raise pytest.UsageError(f"--quant-lm-eval-include {include}: names where lm-eval task names are looked up; it needs "
                         f"--quant-tasks=lm-eval:<task name>, got --quant-tasks {tasks or '(none)'}")
    return tasks.with_include(include)


def installed() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def parse_spec(value: str) -> LmEvalSpec:
    """``lm-eval:a.yaml,name``; ``ValueError`` naming the bad entry, a missing file, or lm-eval not installed."""
    entries = [e.strip() for e in value.strip()[len(PREFIX):].split(",") if e.strip()]
    if not entries:
        raise ValueError(f"no task named; accepted: {ACCEPTED}")
    tasks = []
    for entry in entries:
        if entry.lower().endswith(YAML_SUFFIXES):
            path = Path(entry).expanduser()
            if not path.is_file():
                raise ValueError(f"{entry}: no such task YAML file; accepted: {ACCEPTED}")
            entry = str(path.resolve())
        tasks.append(entry)
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"a task is named twice in {value!r}")
    if not installed():
        raise ValueError(f"lm-eval tasks need lm-eval, which is not installed: {INSTALL_HINT}")
    return LmEvalSpec(tuple(tasks))


def load_tasks(spec: LmEvalSpec) -> list[tuple[str, object]]:
    """(name, lm_eval Task) for every task named, in order; lm-eval's built-in index (seconds to build) is read only
    for a name that neither a YAML file nor the include folder gives. ``ValueError`` naming what failed."""
    from lm_eval.tasks import TaskManager

    include = [str(spec.include)] if spec.include is not None else None
    manager = TaskManager(include_path=include, include_defaults=False)
    unknown = [t for t in spec.tasks if not t.endswith(YAML_SUFFIXES) and t not in manager.all_tasks]
    if unknown:
        manager = TaskManager(include_path=include, include_defaults=True)
        missing = [t for t in unknown if t not in manager.all_tasks]
        if missing:
            where = f"--quant-lm-eval-include {spec.include} or " if spec.include else ""
            raise ValueError(f"no lm-eval task named {missing[0]!r} in {where}lm-eval's own tasks; accepted: {ACCEPTED}")
    out = []
    for entry in spec.tasks:
        try:
            loaded = manager.load([entry])["tasks"]
        except Exception as exc:  # lm-eval raises whatever its YAML, Jinja or datasets code raises
            raise ValueError(f"{entry}: lm-eval could not load the task or its data ({type(exc).__name__}: {exc}); "
                             "its data must be local: dataset_path: json with dataset_kwargs: {data_files: ...}") from None
        out += sorted(loaded.items())
    return out


def _document_item(task, name: str, number: int, doc):
    from .measure.tasks import TaskItem

    where = f"{PREFIX}{name}: document {number}"
    question, choices, target = task.doc_to_text(doc), task.doc_to_choice(doc), task.doc_to_target(doc)
    if not isinstance(question, str):
        raise ValueError(f"{where}: doc_to_text gave {question!r}, not a text")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise ValueError(f"{where}: doc_to_choice gave {choices!r}; accepted: a list of at least 2 texts")
    if isinstance(target, str) and target in choices:
        target = choices.index(target)
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(choices):
        raise ValueError(f"{where}: doc_to_target gave {target!r}; accepted: one choice's index (0 to "
                         f"{len(choices) - 1}) or its text (a list of several correct answers is not)")
    return TaskItem(f"{PREFIX}{name}:{number}", question, target, tuple(choices))


def read_items(spec: LmEvalSpec) -> tuple[tuple, str]:
    """The items of every task named, in order, and a salt for their digest (lm-eval's version and each task's
    config: a changed prompt, delimiter or few-shot setting is another task). ``ValueError`` naming the task,
    the document and what is accepted."""
    from importlib.metadata import version

    items, configs = [], []
    for name, task in load_tasks(spec):
        if task.OUTPUT_TYPE != "multiple_choice":
            raise ValueError(f"{PREFIX}{name}: output_type {task.OUTPUT_TYPE!r}; accepted: 'multiple_choice' (its "
                             "per-item answers are the choices' log-likelihoods, compared the paired way)")
        docs = list(task.eval_docs)
        if not docs:
            raise ValueError(f"{PREFIX}{name}: its data has no documents")
        items += [_document_item(task, name, number, doc) for number, doc in enumerate(docs)]
        configs.append(task.config.to_dict())
    salt = json.dumps({"lm_eval": version("lm_eval"), "configs": configs}, sort_keys=True, default=str)
    return tuple(items), salt
