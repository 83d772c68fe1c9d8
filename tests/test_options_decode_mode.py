"""--quant-decode-mode and its ini twin: parsed when read, compiled by default on CUDA, eager on CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pytest_quant.options import DECODE_MODES, QuantOptions, parse_decode_mode
from pytest_quant.recipes import DECODE_MODES as RECIPE_DECODE_MODES


class Config:
    """What QuantOptions.from_config reads of a pytest config: options, ini values, the root path."""

    def __init__(self, options: dict, ini: dict | None = None):
        self.options, self.ini, self.rootpath, self.cache = options, ini or {}, Path("."), None

    def getoption(self, name):
        return self.options.get(name)

    def getini(self, name):
        return self.ini.get(name)


def options(cli: dict, ini: dict | None = None) -> QuantOptions:
    return QuantOptions.from_config(Config({"quant_cache_dir": Path("/tmp/qc"), **cli}, ini))


def test_the_option_accepts_the_recipe_modes_and_names_a_bad_value() -> None:
    assert DECODE_MODES == RECIPE_DECODE_MODES
    assert parse_decode_mode(" Cuda-Graph ") == "cuda-graph"
    with pytest.raises(argparse.ArgumentTypeError, match="--quant-decode-mode 'graph': expected one of compiled, "
                                                         "cuda-graph, eager"):
        parse_decode_mode("graph")


def test_default_is_compiled_on_cuda_and_eager_on_cpu() -> None:
    assert options({"quant_gpu": True}).decode_mode == "compiled"
    assert options({}).decode_mode == "eager"


def test_the_command_line_wins_over_the_ini_twin() -> None:
    assert options({"quant_gpu": True}, {"quant_decode_mode": "eager"}).decode_mode == "eager"
    assert options({"quant_gpu": True, "quant_decode_mode": "cuda-graph"},
                   {"quant_decode_mode": "eager"}).decode_mode == "cuda-graph"
    assert options({}, {"quant_decode_mode": "compiled"}).decode_mode == "compiled"  # CPU compiles too
    with pytest.raises(pytest.UsageError, match="ini quant_decode_mode = 'fast'.*expected one of"):
        options({}, {"quant_decode_mode": "fast"})


def test_cuda_graph_on_cpu_is_a_usage_error() -> None:
    with pytest.raises(pytest.UsageError, match="--quant-decode-mode cuda-graph needs a CUDA device.*cpu"):
        options({"quant_decode_mode": "cuda-graph"})
