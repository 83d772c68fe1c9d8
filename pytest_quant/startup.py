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
              "--quant-prompts")


def check_start(config: pytest.Config, options) -> None:
    """The checks of the parsed options' paths (``check_space_form`` runs first, before they are parsed)."""
    if options.eval_text is not None:
        check_eval_text(Path(options.eval_text))
    check_folder("--quant-cache-dir", Path(options.cache_dir))
    check_folder("--quant-baseline-dir", Path(options.baseline_dir), writable=False)  # comparing only reads
    if options.report is not None and not hasattr(config, "workerinput"):
        from .report.files import report_path

        check_report_target(report_path(options.report, config.invocation_params.dir))


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
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise pytest.UsageError(f"--quant-eval-text {path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                                f"{exc.start}: {exc.reason}); give a plain UTF-8 text file") from None


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
