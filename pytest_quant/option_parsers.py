"""The converters argparse calls on the plugin's option values: each returns the parsed value or raises
``argparse.ArgumentTypeError`` naming the flag, the bad value and what would be accepted. Files are read and
checked here, before any model loads."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Callable

from .models import ModelSource, resolve_model


def parse_device(value: str) -> str:
    value = value.strip().lower()
    if value in ("cpu", "auto") or re.fullmatch(r"cuda(:[0-9]+)?", value):
        return "cuda:0" if value == "cuda" else value
    raise argparse.ArgumentTypeError(f"--quant-device {value!r}: expected 'cpu', 'cuda', 'cuda:N' or 'auto'")


def parse_recipe_names(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"--quant-recipes {value!r}: expected comma-separated recipe names")
    return names


def parse_eval_tokens(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--quant-eval-tokens {value!r}: expected a whole number >= 2") from None
    if n < 2:
        raise argparse.ArgumentTypeError(f"--quant-eval-tokens {value!r}: expected a whole number >= 2")
    return n


def parse_whole(flag: str, value: str, minimum: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{flag} {value!r}: expected a whole number >= {minimum}") from None
    if n < minimum:
        raise argparse.ArgumentTypeError(f"{flag} {value!r}: expected a whole number >= {minimum}")
    return n


def parse_seconds(flag: str, value: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{flag} {value!r}: expected a number of seconds > 0")
    return seconds


def parse_top_k_option(value: str) -> int | str:
    text = str(value).strip().lower()
    if text == "exact":
        return "exact"
    return parse_whole("--quant-reference-top-k", text, minimum=1)


def parse_existing_file(flag: str, folder: bool = False) -> Callable[[str], Path]:
    def parse(value: str) -> Path:
        path = Path(value).expanduser()
        if not (path.is_dir() if folder else path.is_file()):
            raise argparse.ArgumentTypeError(f"{flag} {value!r}: no such {'folder' if folder else 'file'}")
        return path

    return parse


def parse_checked_file(flag: str, read: Callable[[Path], Any]) -> Callable[[str], Path]:
    """A path whose contents ``read`` checks now (its ValueError names the bad file:line), before any model loads."""
    def parse(value: str) -> Path:
        path = Path(value).expanduser()
        try:
            read(path)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{flag} {value!r}: {exc}") from None
        return path

    return parse


def parse_prompts_file(value: str) -> Path:
    """``--quant-prompts``: a JSONL file of prompts, every line checked now."""
    from .prompts import read_prompts

    return parse_checked_file("--quant-prompts", read_prompts)(value)


def parse_images(value: str) -> Path:
    """``--quant-images``: a folder of images or a JSONL file of image prompts, every line and image checked now."""
    from .images import read_images

    return parse_checked_file("--quant-images", read_images)(value)


def parse_tasks_file(value: str):
    """A task file read and checked now (``tasks.tasks_option``), or an lm-eval spec, before any model loads."""
    from .tasks import tasks_option

    try:
        return tasks_option(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--quant-tasks {value!r}: {exc}") from None


DECODE_MODES = ("compiled", "cuda-graph", "eager")  # pytest_quant.recipes.DECODE_MODES


def parse_decode_mode(value: str) -> str:
    mode = str(value).strip().lower()
    if mode not in DECODE_MODES:
        raise argparse.ArgumentTypeError(f"--quant-decode-mode {value!r}: expected one of {', '.join(DECODE_MODES)}")
    return mode


def parse_model(value: str) -> ModelSource:
    try:
        return resolve_model(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not a boolean; use true or false")
