"""Command-line options and their ini twins, parsed where argparse reads them (the converters: option_parsers).

Every converter raises ``argparse.ArgumentTypeError`` (on the command line) or ``pytest.UsageError``
(through :func:`value_or_ini`) with the bad value and what would be accepted.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from .hardware import is_cuda
from .measure.reference import DEFAULT_TOP_K  # its one place: measured in benchmarks/bench_compact_kl.py
from .models import EMBEDDED, ModelSource, embedded_eval_text, resolve_model
from .option_parsers import (  # DECODE_MODES and the parsers: importable from here too
    DECODE_MODES,  # noqa: F401
    parse_device,
    parse_recipe_names,
    parse_eval_tokens,
    parse_whole,
    parse_seconds,
    parse_top_k_option,
    parse_existing_file,
    parse_images,
    parse_prompts_file,
    parse_tasks_file,
    parse_decode_mode,
    parse_model,
    parse_bool,
)

@dataclass(frozen=True)
class Option:
    flag: str
    help: str
    parse: Callable[[str], Any] | None = None
    ini_type: str | None = None  # pytest ini type ("bool", "linelist", "string")
    action: str = "store"
    default: Any = None


OPTIONS: tuple[Option, ...] = (
    Option("--quant-gpu", "run on CUDA; without it recipes run on CPU and quant_gpu tests skip (default: false)",
           ini_type="bool", action="store_true"),
    Option("--quant-model", f"model to gate: a local folder or {'/'.join(sorted(EMBEDDED))}; repeatable (default: tiny)",
           parse_model, ini_type="linelist", action="append"),
    Option("--quant-recipes", "comma-separated recipe names (default: every built-in whose backend is installed)",
           parse_recipe_names),
    Option("--quant-device", "device to run on: cpu, cuda, cuda:N, or auto to spread each model over the visible GPUs "
           "(accelerate's device_map='auto') (default: cuda:0 with --quant-gpu, else cpu; under xdist each worker's own GPU)",
           parse_device),
    Option("--quant-eval-text", "text file for perplexity and KL (default: the embedded held-out text)",
           parse_existing_file("--quant-eval-text")),
    Option("--quant-eval-tokens", "tokens of the eval text to score (default: 8192)", parse_eval_tokens),
    Option("--quant-decode-batch", "sequences decoded together when timing decode speed (default: 1)",
           lambda v: parse_whole("--quant-decode-batch", v, minimum=1)),
    Option("--quant-decode-mode", "how decode speed is timed: compiled (torch.compile, then a CUDA graph), cuda-graph "
           "(the eager step as a CUDA graph) or eager; a mode that cannot run falls back to the next, with its reason "
           "(default: compiled with --quant-gpu, else eager)", parse_decode_mode),
    Option("--quant-timing-budget", "the most seconds one recipe's timed decode may take; a short probe run estimates "
           "it first and a recipe over it fails its speed test with the estimate (default: 600)",
           lambda v: parse_seconds("--quant-timing-budget", v)),
    Option("--quant-reference-top-k", "log-probabilities kept per token of the reference for KL: a whole number k, "
           f"or 'exact' for the whole vocabulary (default: {DEFAULT_TOP_K})", lambda v: parse_top_k_option(v)),
    Option("--quant-strict", "a recipe whose backend is missing fails instead of skipping (default: false)",
           ini_type="bool", action="store_true"),
    Option("--quant-baseline-dir", "folder of stored baselines (default: baselines)", Path),
    Option("--quant-cache-dir", "folder for quantized models (default: inside pytest's cache directory)", Path),
    Option("--quant-report", "write the summary to PATH: .md, .json or .html, with a plot beside it", Path),
    Option("--quant-prompts", "prompts for generation_agreement: a text file, one prompt a line, or .jsonl with "
           '"prompt" or chat "messages" (default: openings of the embedded held-out text)', parse_prompts_file),
    Option("--quant-images", 'image prompts for image-text-to-text models: a folder of images, or .jsonl with "image" and '
           '"prompt", or chat "messages" with one image part (default: images drawn by the plugin)', parse_images),
    Option("--quant-tasks", 'items for task_accuracy: a .jsonl file, one item a line: multiple choice ("question", '
           '"choices", "answer") or short answer ("question", "answer") (default: the embedded cloze task, written '
           "from the held-out text); or lm-eval:<task.yaml or task name>[,...]: lm-eval multiple-choice tasks with local "
           "data, run by lm-eval on the loaded model (extra tasks)", parse_tasks_file),
    Option("--quant-lm-eval-include", "a folder of lm-eval task YAMLs where the task names of --quant-tasks=lm-eval:... "
           "are looked up first (then lm-eval's own tasks)", parse_existing_file("--quant-lm-eval-include", folder=True)),
    Option("--quant-trust-remote-code", "let transformers run the Python code a model folder ships (auto_map in its "
           "config.json or tokenizer_config.json); without it such a folder is refused at start-up (default: false)",
           ini_type="bool", action="store_true"),
)


def ini_name(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("quant", "pytest-quant: gate LLM quantization quality")
    for opt in OPTIONS:
        kwargs: dict[str, Any] = {"action": opt.action, "dest": ini_name(opt.flag), "help": opt.help, "default": None}
        if opt.parse is not None:
            kwargs["type"] = opt.parse
        group.addoption(opt.flag, **kwargs)
        parser.addini(ini_name(opt.flag), f"ini twin of {opt.flag}", type=opt.ini_type or "string", default=None)


def value_or_ini(config: pytest.Config, flag: str) -> Any:
    """The command line wins; otherwise the ini value, parsed by the same converter as the flag."""
    opt = next(o for o in OPTIONS if o.flag == flag)
    name = ini_name(flag)
    value = config.getoption(name)
    if value is not None:
        return value
    try:
        raw = config.getini(name)
    except (ValueError, pytest.UsageError) as exc:  # pytest's own parsing of a bool: "invalid truth value 'maybe'"
        raise pytest.UsageError(f"ini {name}: {exc}; accepted: true or false") from None
    if raw is None or raw == "" or raw == []:
        return None
    try:
        if opt.ini_type == "bool":
            return parse_bool(raw)
        if opt.ini_type == "linelist":
            return [opt.parse(v) for v in raw] if opt.parse else list(raw)
        return opt.parse(raw) if opt.parse else raw
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise pytest.UsageError(f"ini {name} = {raw!r}: {exc}") from None


@dataclass(frozen=True)
class QuantOptions:
    gpu: bool
    device: str
    models: tuple[ModelSource, ...]
    recipe_names: tuple[str, ...] | None
    eval_text: Path
    eval_tokens: int
    strict: bool
    baseline_dir: Path
    cache_dir: Path
    report: Path | None
    reference_top_k: int | str = DEFAULT_TOP_K
    decode_batch: int = 1
    prompts: Path | None = None  # --quant-prompts; None: pytest_quant.prompts.default_prompts
    images: Path | None = None  # --quant-images; None: pytest_quant.images.default_images
    device_map: str | None = None  # "auto" (--quant-device auto): models spread over the visible GPUs; device = the first
    device_given: str | None = None  # --quant-device as given (None: the default); pytest_quant.workers reads it
    trust_remote_code: bool = False  # --quant-trust-remote-code: passed to every from_pretrained (LoadRequest)
    decode_mode: str = "eager"  # --quant-decode-mode: measure.throughput's mode (a recipe's decode_mode may lower it)
    timing_budget_s: float = 600.0  # --quant-timing-budget: the most seconds one recipe's timed decode may take
    tasks: Any = None  # --quant-tasks: a Path, a lmeval_tasks.LmEvalSpec; None: pytest_quant.tasks.cloze_task

    @property
    def sharded(self) -> bool:
        return self.device_map == "auto"

    @classmethod
    def from_config(cls, config: pytest.Config) -> "QuantOptions":
        gpu = bool(value_or_ini(config, "--quant-gpu"))
        device = device_given = value_or_ini(config, "--quant-device")
        device_map = None
        if device == "auto":
            if not gpu:
                raise pytest.UsageError("--quant-device auto spreads each model over the visible GPUs: it needs --quant-gpu")
            device, device_map = "cuda:0", "auto"  # inputs go where accelerate puts the embeddings: the first GPU
        if device is None:
            device = "cuda:0" if gpu else "cpu"
        elif is_cuda(device) and not gpu:
            raise pytest.UsageError(f"--quant-device {device}: a CUDA device needs --quant-gpu")
        elif device == "cpu" and gpu:
            raise pytest.UsageError("--quant-device cpu conflicts with --quant-gpu; drop one of them")
        models = value_or_ini(config, "--quant-model") or [resolve_model("tiny")]
        names = [m.name for m in models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise pytest.UsageError(f"--quant-model: two models share the name {duplicates[0]!r}; rename a folder")
        decode_mode = value_or_ini(config, "--quant-decode-mode") or ("compiled" if is_cuda(device) else "eager")
        if decode_mode == "cuda-graph" and not is_cuda(device):
            raise pytest.UsageError(f"--quant-decode-mode cuda-graph needs a CUDA device (--quant-gpu); device is {device}")
        cache_dir = value_or_ini(config, "--quant-cache-dir")
        if cache_dir is None:
            cache_dir = Path(config.cache.mkdir("quant")) if getattr(config, "cache", None) else Path(".quant-cache")
        return cls(
            gpu=gpu,
            device=device,
            models=tuple(dict.fromkeys(models)),
            recipe_names=value_or_ini(config, "--quant-recipes"),
            eval_text=value_or_ini(config, "--quant-eval-text") or embedded_eval_text(),
            eval_tokens=value_or_ini(config, "--quant-eval-tokens") or 8192,
            strict=bool(value_or_ini(config, "--quant-strict")),
            baseline_dir=value_or_ini(config, "--quant-baseline-dir") or Path(config.rootpath, "baselines"),
            cache_dir=cache_dir,
            report=value_or_ini(config, "--quant-report"),
            reference_top_k=value_or_ini(config, "--quant-reference-top-k") or DEFAULT_TOP_K,
            decode_batch=value_or_ini(config, "--quant-decode-batch") or 1,
            prompts=value_or_ini(config, "--quant-prompts"),
            images=value_or_ini(config, "--quant-images"),
            device_map=device_map,
            device_given=device_given,
            trust_remote_code=bool(value_or_ini(config, "--quant-trust-remote-code")),
            decode_mode=decode_mode,
            timing_budget_s=value_or_ini(config, "--quant-timing-budget") or 600.0,
            tasks=_tasks(config),
        )


def _tasks(config: pytest.Config):
    """--quant-tasks, with --quant-lm-eval-include folded into its lm-eval spec (``lmeval_tasks.fold_include``)."""
    from .lmeval_tasks import fold_include

    return fold_include(value_or_ini(config, "--quant-tasks"), value_or_ini(config, "--quant-lm-eval-include"))
