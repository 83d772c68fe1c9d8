"""Start-up checks of the values that name files and folders, run from pytest_configure before any model loads.

Each problem is a ``pytest.UsageError`` (exit 4) naming the option, the path and what is accepted, so a
typo costs a second instead of a reference model's load followed by a library traceback.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Options whose value is a path: written as ``--flag PATH`` with no test path, pytest's rootdir and ini-file
# discovery (which runs before plugins' options are known) takes PATH for a test path.
PATH_FLAGS = ("--quant-model", "--quant-eval-text", "--quant-baseline-dir", "--quant-cache-dir", "--quant-report",
              "--quant-prompts", "--quant-tasks", "--quant-images")


def check_start(config: pytest.Config, options) -> None:
    """The checks of the parsed options (``check_space_form`` runs first, before they are parsed): paths, the
    model folders, the prompts against each model, the decode batch against the device's memory. Reads JSON
    and tokenizer files only: no model loads, torch is not imported."""
    if options.eval_text is not None:
        check_eval_text(Path(options.eval_text))
    check_folder("--quant-cache-dir", Path(options.cache_dir))
    check_folder("--quant-baseline-dir", Path(options.baseline_dir), writable=False)  # comparing only reads
    controller = not hasattr(config, "workerinput")
    if options.report is not None and controller:
        from .report.files import report_path

        check_report_target(report_path(options.report, config.invocation_params.dir))
    for model in options.models:
        check_model(model, bool(getattr(options, "trust_remote_code", False)))
    if options.prompts is not None:
        check_prompts(Path(options.prompts), options.models)
    if getattr(options, "images", None) is not None:
        from .models.vision import images_problem

        problem = images_problem(Path(options.images), options.models)
        if problem:
            raise pytest.UsageError(problem)
    if hasattr(options.tasks, "with_include"):
        check_lm_eval_tasks(options.tasks)
    check_decode_batch(options)
    if controller:
        sweep_cache(Path(options.cache_dir))


def check_model(model, trust_remote_code: bool) -> None:
    """A folder that makes transformers run its own code is refused unless --quant-trust-remote-code."""
    from .models import remote_code_files

    if trust_remote_code:
        return
    found = remote_code_files(model.path)
    if found:
        raise pytest.UsageError(
            f"--quant-model {model.path}: the folder ships Python code that transformers would run to load it: "
            f"{found[0]}; pass --quant-trust-remote-code (ini quant_trust_remote_code = true) if you trust that code")


def check_lm_eval_tasks(spec) -> None:
    """Every document of the lm-eval tasks named becomes an item (``lmeval_tasks.read_items``): lm-eval loads
    the tasks and their local data now, so a bad YAML, data file or document stops the run before any model loads."""
    from .lmeval_tasks import read_items

    try:
        read_items(spec)
    except ValueError as exc:
        raise pytest.UsageError(f"--quant-tasks {spec}: {exc}") from None


def check_prompts(path: Path, models) -> None:
    """Every prompt fits every model's context, and chat prompts need a chat template (``prompts.check_fits``,
    ``prompts.check_chat_template``), each named as file:line."""
    from .models import context_length, has_chat_template
    from .prompts import check_chat_template, check_fits, read_prompts, token_counter

    try:
        prompts = read_prompts(path)
        for model in models:
            check_chat_template(prompts, has_chat_template(model.path), model.name)
            context = context_length(model.path)
            if context is not None:
                check_fits(prompts, context, token_counter(model.path), model.name)
    except ValueError as exc:
        raise pytest.UsageError(f"--quant-prompts {path}: {exc}") from None


# What decode timing holds per sequence (pytest_quant.run.measurer: a 128-token prompt, then 128 timed steps
# on CUDA and 32 on CPU, plus warm-up steps in the static cache).
DECODE_PROMPT_TOKENS = 128
DECODE_POSITIONS = {"cuda": 128 + 128 + 8, "cpu": 128 + 32 + 8}
MAX_DECODE_BATCH = 65536  # where no memory estimate can be made: far past any serving batch


def decode_memory_bytes(config: dict, batch: int, device: str, weights_bytes: int) -> int | None:
    """A lower estimate of the memory decode timing at ``batch`` needs: the weights, and per sequence the KV
    cache of every position, one layer's prefill activations and the last position's float32 logits. None
    when config.json lacks the shape."""
    from .hardware import device_kind

    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    try:
        layers, hidden = int(text["num_hidden_layers"]), int(text["hidden_size"])
        heads = int(text["num_attention_heads"])
        kv_heads = int(text.get("num_key_value_heads") or heads)
        head_dim = int(text.get("head_dim") or hidden // heads)
        intermediate = int(text.get("intermediate_size") or 4 * hidden)
        vocab = int(text.get("vocab_size") or config.get("vocab_size") or 0)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    kind = device_kind(device)
    element = 4 if kind == "cpu" else 2  # fp32 on CPU, the checkpoint's 16-bit dtype on GPU (backends.common)
    kv = 2 * layers * kv_heads * head_dim * DECODE_POSITIONS[kind] * element
    prefill = DECODE_PROMPT_TOKENS * (2 * hidden + intermediate) * element
    return weights_bytes + batch * (kv + prefill + vocab * 4)


def decode_batch_problem(model_path: Path, batch: int, device: str, flag: str = "--quant-decode-batch",
                         devices: tuple[str, ...] | None = None) -> str | None:
    """Why decode timing at ``batch`` cannot run for the model on ``device`` (None when it may); ``devices``:
    every GPU of a model spread over them (their memory is added up)."""
    from .models import is_gguf_file, read_config
    from .hardware import device_memory_bytes
    from .qcache import WEIGHT_SUFFIXES
    from .units import format_bytes

    if is_gguf_file(model_path):
        return (f"{flag} {batch}: {Path(model_path).name} is a GGUF file; llama.cpp's decode is timed one sequence at a "
                "time here") if batch > 1 else None
    if batch <= 1:
        return None
    weights = sum(p.stat().st_size for p in Path(model_path).iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    need = decode_memory_bytes(read_config(model_path), batch, device, weights)
    sizes = [device_memory_bytes(d) for d in (devices or (device,))]
    memory = None if None in sizes else sum(sizes)
    if need is None or memory is None:
        if batch > MAX_DECODE_BATCH:
            return f"{flag} {batch}: more than {MAX_DECODE_BATCH} sequences; give at most {MAX_DECODE_BATCH}"
        return None
    if need > memory:
        per_sequence = (need - weights) / batch
        fits = max(1, int((memory - weights) // per_sequence)) if memory > weights else 1
        return (f"{flag} {batch}: decoding {batch} sequences of {Path(model_path).name} needs at least "
                f"{format_bytes(need)} (KV cache, activations and logits, estimated from its config.json) and "
                f"{'+'.join(devices or (device,))} {'have' if devices and len(devices) > 1 else 'has'} "
                f"{format_bytes(memory)}; give at most about {fits}")
    return None


def check_decode_batch(options) -> None:
    if int(options.decode_batch) <= 1:
        return
    devices = None
    if getattr(options, "sharded", False):
        from .hardware import visible_cuda_devices

        devices = visible_cuda_devices()
    for model in options.models:
        problem = decode_batch_problem(model.path, int(options.decode_batch), options.device, devices=devices)
        if problem:
            raise pytest.UsageError(problem)


def sweep_cache(cache_dir: Path) -> None:
    """Remove temporary files and folders killed writers left in the cache folder and its subfolders
    (``atomic.remove_stale_temps``: never a live writer's); links are not followed."""
    from .atomic import remove_stale_temps

    if not cache_dir.is_dir():
        return
    remove_stale_temps(cache_dir)
    for sub in cache_dir.iterdir():
        if sub.is_dir() and not sub.is_symlink() and not sub.name.startswith("."):
            remove_stale_temps(sub)


def space_form_values(args: list[str]) -> list[tuple[str, str]]:
    """``(flag, value)`` for every path option written as two words (``--quant-model PATH``)."""
    return [(flag, args[i + 1]) for i, flag in enumerate(args[:-1]) if flag in PATH_FLAGS]


def check_space_form(config: pytest.Config) -> None:
    """Refuse a ``--flag PATH`` that made pytest find another rootdir or ini file than without it."""
    pairs = space_form_values([str(a) for a in config.invocation_params.args])
    if not pairs:
        return
    found = _setup_without(config, {value for _, value in pairs})
    if found is None or found == (config.rootpath, config.inipath):
        return
    rootdir, inipath = found
    flag, value = pairs[0]
    raise pytest.UsageError(
        f"{flag} {value}: pytest took {value} for a test path when it looked for the project's configuration, "
        f"so this run uses rootdir {config.rootpath} and ini file {config.inipath or '(none)'} instead of rootdir "
        f"{rootdir} and ini file {inipath or '(none)'}; write it as {flag}={value}")


def _setup_without(config: pytest.Config, values: set[str]) -> tuple[Path, Path | None] | None:
    """The rootdir and ini file pytest would have found without ``values`` among the test paths (None when
    this pytest's discovery cannot be asked)."""
    try:
        from _pytest.config.findpaths import determine_setup

        args = [a for a in (config.args if config.args_source == pytest.Config.ArgsSource.ARGS else [])
                if a not in values]
        rootpath, inipath, *_ = determine_setup(
            inifile=config.option.inifilename, override_ini=config.option.override_ini, args=args,
            rootdir_cmd_arg=config.option.rootdir or None, invocation_dir=config.invocation_params.dir)
    except Exception:  # a pytest whose private discovery API differs: skip the check rather than break start-up
        return None
    return Path(rootpath), (Path(inipath) if inipath else None)


def check_eval_text(path: Path) -> None:
    """The eval text must be non-empty UTF-8 text; its token count is checked when it is first tokenized."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise pytest.UsageError(f"--quant-eval-text {path}: cannot read it ({exc.strerror or exc})") from None
    if not data.strip():
        raise pytest.UsageError(f"--quant-eval-text {path}: the file is empty; give a UTF-8 text file with at least a "
                                "few sentences (a few thousand tokens for a stable perplexity)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise pytest.UsageError(f"--quant-eval-text {path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                                f"{exc.start}: {exc.reason}); give a plain UTF-8 text file") from None
    if not text.strip():  # NBSP, em and ideographic spaces: blank to str.strip, not to bytes.strip
        raise pytest.UsageError(f"--quant-eval-text {path}: the file holds only whitespace; give a UTF-8 text file "
                                "with at least a few sentences")
    if not any(c.isalnum() for c in text):
        raise pytest.UsageError(f"--quant-eval-text {path}: the file holds no letters or digits (only punctuation or "
                                "symbols such as emoji); perplexity over it says nothing about text a model is used "
                                "for: give a text in a natural language")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_folder(flag: str, path: Path, writable: bool = True) -> None:
    """A folder the plugin may create: it, or its nearest existing parent, must be a (writable) folder."""
    existing = _nearest_existing(path)
    if not existing.is_dir():
        what = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise pytest.UsageError(f"{flag} {path}: {what}; give a folder")
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        raise pytest.UsageError(f"{flag} {path}: {existing} is not writable; give a folder you can write to")


def check_report_target(path: Path) -> None:
    """Create the report's folder and write a scratch file in it now, so that a bad place fails before the run."""
    if path.is_dir():
        raise pytest.UsageError(f"--quant-report {path}: is a folder; give a file path ending in .md, .json or .html")
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise pytest.UsageError(f"--quant-report {path}: cannot create its folder: {existing} is a file; give a path "
                                "in a writable folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent, prefix=f".{path.name}."):
            pass
    except OSError as exc:
        raise pytest.UsageError(f"--quant-report {path}: cannot write there ({exc.strerror or exc}); give a path in a "
                                "writable folder") from None
