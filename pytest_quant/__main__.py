"""``python -m pytest_quant cache-key [--pyproject PATH] [--explain]``: the plugin's cache key, for CI caches."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

USAGE_ERROR = 4  # pytest.ExitCode.USAGE_ERROR, as the plugin's usage errors


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m pytest_quant", description="pytest-quant helpers for CI.")
    commands = top.add_subparsers(dest="command", metavar="{cache-key}", required=True)
    key = commands.add_parser(
        "cache-key", help="print the plugin's cache key (for actions/cache of --quant-cache-dir)",
        description="Print the key of the plugin's cache: a hash of the cache format, the pytest-quant and "
                    "quantization library versions, and the project's [tool.pytest-quant] table and quant_* ini "
                    "keys. Model weights are not hashed: cache entries check their own files on every lookup.")
    key.add_argument("--pyproject", type=Path, default=None,
                     help="the project's pyproject.toml (default: ./pyproject.toml when there is one)")
    key.add_argument("--explain", action="store_true", help="print the key and its inputs as JSON")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .cache_key import SettingsError, compute

    try:
        computed = compute(args.pyproject)
    except SettingsError as exc:
        flag = "--pyproject " if args.pyproject is not None else ""
        print(f"pytest-quant cache-key: {flag}{exc}", file=sys.stderr)
        return USAGE_ERROR
    print(json.dumps(computed.explain(), indent=2, sort_keys=True, default=str) if args.explain else computed.key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
