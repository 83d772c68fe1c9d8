"""What every model of a session is measured on, prepared once: the eval text's windows per model (its
tokenizer) and the generation prompts."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from ..models import ModelSource

FEW_TOKENS_DIVISOR = 2  # fewer than half the tokens asked for: warn (fail under --quant-strict)
NOISY_BELOW_TOKENS = 2048  # below this many scored tokens, perplexity and KL are mostly noise


def few_tokens_note(scored: int, asked: int, text: Path) -> str | None:
    """A warning when far fewer tokens are scored than --quant-eval-tokens asks for (a short eval text)."""
    if scored * FEW_TOKENS_DIVISOR >= asked:
        return None
    note = (f"pytest-quant: only {scored} tokens of {text} scored, of the {asked} asked for (--quant-eval-tokens): "
            "the whole text was scored")
    if scored < NOISY_BELOW_TOKENS:
        return note + "; perplexity and KL over so few tokens are mostly noise: give a longer --quant-eval-text"
    return note + f"; ask for at most {scored} tokens or give a longer --quant-eval-text"


class Inputs:
    """The eval windows (tokenized once per model), the prompts and the task items (each read once)."""

    def __init__(self, eval_text: Path, eval_tokens: int, prompts_path: Path | None, strict: bool,
                 trust_remote_code: bool = False, tasks_path=None):
        from ..measure.quality import EvalSpec

        self.spec = EvalSpec(text_path=eval_text, max_tokens=eval_tokens)  # its batch_windows: the eval batch
        self._asked = eval_tokens
        self._prompts_path = prompts_path
        self._strict = strict
        self._trust_remote_code = trust_remote_code
        self._windows: dict[str, object] = {}
        self._prompts = None
        self._tasks_path = tasks_path
        self._tasks = None
        self._task_salt = ""  # an lm-eval task's config (lmeval_tasks.read_items)

    @property
    def batch_windows(self) -> int:
        return self.spec.batch_windows

    def windows(self, model: ModelSource, tokenizer=None):
        """The eval text's windows for this model's tokenizer, tokenized once per session and tokenizer family
        (transformers', or llama.cpp's for a GGUF recipe: each side of a comparison is tokenized by its own runtime)."""
        from ..measure.quality import prepare

        key = (model.name, getattr(tokenizer, "pytest_quant_family", "transformers"))
        if key not in self._windows:
            if tokenizer is None:
                from ..backends.common import load_tokenizer

                tokenizer = load_tokenizer(model.path, self._trust_remote_code)
            try:
                windows, problem = prepare(tokenizer, self.spec, max_positions=_max_positions(model)), None
            except ValueError as exc:  # too few tokens: the file and the count, without a traceback
                windows, problem = None, f"--quant-eval-text: {exc}"
            if problem:
                pytest.fail(problem, pytrace=False)  # outside the except: no "During handling ..." above it
            few = few_tokens_note(windows.tokens_scored, self._asked, self.spec.text_path)
            if few and self._strict:
                pytest.fail(f"{few} (--quant-strict)", pytrace=False)
            if few:
                warnings.warn(pytest.PytestWarning(few))
            self._windows[key] = windows
        return self._windows[key]

    def prompts(self):
        """The generation prompts: --quant-prompts, else openings of the embedded held-out text."""
        from ..prompts import default_prompts, read_prompts

        if self._prompts is None:
            path = self._prompts_path
            self._prompts = read_prompts(path) if path is not None else default_prompts()
        return self._prompts


    def tasks(self):
        """The task items: --quant-tasks (a file, or lm-eval tasks' documents), else the embedded cloze task."""
        from ..tasks import cloze_task, read_tasks

        if self._tasks is None:
            if self.lm_eval is not None:
                from ..lmeval_tasks import read_items

                self._tasks, self._task_salt = read_items(self.lm_eval)
            else:
                self._tasks = read_tasks(self._tasks_path) if self._tasks_path is not None else cloze_task()
        return self._tasks

    @property
    def lm_eval(self):
        """The lm-eval tasks named by --quant-tasks=lm-eval:... (lmeval_tasks.LmEvalSpec), else None."""
        return self._tasks_path if hasattr(self._tasks_path, "with_include") else None

    def task_digest(self) -> str:
        """What the reference's cached answers were given for: the items, and an lm-eval task's config."""
        from ..tasks import task_digest

        items = self.tasks()
        return task_digest(items, self._task_salt)

    @property
    def task_name(self) -> str:
        if self.lm_eval is not None:
            return self.lm_eval.name
        return Path(self._tasks_path).name if self._tasks_path is not None else "the embedded cloze task"


def _max_positions(model: ModelSource) -> int | None:
    """The model's max_position_embeddings from its config.json (caps the eval context), without loading it."""
    from ..backends.checkpoint import read_config
    from ..models import context_length, is_gguf_file

    value = context_length(model.path) if is_gguf_file(model.path) else read_config(model.path).get("max_position_embeddings")
    return int(value) if value else None
