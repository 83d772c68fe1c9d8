"""The plugin's own tests that cover what existed at 8dd6c27 (issue 18's "same behaviour"), as one pytest command.

Issue 18 asks for `pytest tests` at least 30% faster than at 8dd6c27, running the same behaviour. The suite has
grown since (GGUF through llama.cpp, compressed-tensors, AutoRound, the FP4 recipes, quantized KV caches, task and
layer gates, lm-eval tasks, image-text models, paired statistics, the compiled decode mode and its check, the
timing budget, trust_remote_code, ...), so the command compared with 8dd6c27's whole suite is today's suite
without the tests of what came after it:

- the test modules whose subject module did not exist at 8dd6c27 (``NEW_MODULES``: ``git diff --diff-filter=A
  8dd6c27 -- pytest_quant`` lists those subjects), and
- in the other modules, the tests of a feature added since (``NEW_FEATURES``, matched by ``-k`` against the test
  names; each keyword names one feature and the commit that added it).

Everything else runs, including tests added since 8dd6c27 for what already existed (the redesign's unit tests of
the pure checks, start-up checks, ...): where a test is not clearly of a new feature it stays in, so the subset is
if anything larger than 8dd6c27's behaviour. Slow marks, eval tokens and workers are as the suite sets them.

    python benchmarks/bench_test_speed.py            # print the command
    python benchmarks/bench_test_speed.py --run [ARGS]  # run it (ARGS are added: --durations=30, --cov=...)

Timed against 8dd6c27's whole suite (`cd <a worktree at 8dd6c27> && PYTHONPATH=. pytest tests -p no:cacheprovider
-q`), alternating runs; the figures are in RESULTS.md ("pytest tests: issue 18's speed").
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Test modules of subjects added after 8dd6c27.
NEW_MODULES = (
    "tests/backends/test_auto_round.py",  # backends/auto_round.py (d6bc99b)
    "tests/backends/test_compressed_tensors.py",  # backends/compressed_tensors.py (d6bc99b)
    "tests/backends/test_gguf_convert.py",  # backends/gguf_convert.py (e01a979)
    "tests/backends/test_llama_cpp.py",  # backends/llama_cpp*.py (eb34d96)
    "tests/backends/test_llama_cpp_spec.py",
    "tests/models/test_gguf_header.py",  # models/gguf_header.py (e01a979)
    "tests/test_measure_kv_cache.py",  # measure/kv_cache.py, kv_decode.py (88e70a8, 97cc4d9)
    "tests/measure/test_compile_cache.py",  # measure/compile_cache.py (980f126)
    "tests/measure/test_layers.py",  # measure/layers.py (be1fa4a)
    "tests/measure/test_paired.py",  # measure/paired.py (5f6bd34)
    "tests/measure/test_tasks.py",  # measure/tasks.py, gates/tasks.py, report/tasks.py, run/tasks.py, tasks.py
    "tests/gates/test_tasks.py",
    "tests/report/test_tasks.py",
    "tests/run/test_tasks.py",
    "tests/test_tasks.py",
    "tests/run/test_reference_extras.py",  # run/reference_extras.py: the reference's task answers and layer data
    "tests/test_options_decode_mode.py",  # --quant-decode-mode (ad45de0)
    "tests/run/test_task_gate.py",
    "tests/test_lmeval_tasks.py",  # lmeval_tasks.py, measure/lmeval.py (8de36b3)
    "tests/report/test_layer_plot.py",  # report/layer_plot.py (808fb92)
    "tests/test_images.py",  # image-text-to-text models: images.py, models/vision.py, measure/vision.py,
    "tests/test_vlm.py",  # run/images.py, backends/skip_modules.py (e6e687c)
    "tests/models/test_vision.py",
    "tests/measure/test_vision.py",
    "tests/backends/test_skip_modules.py",
)

# Tests, in modules that existed, of a feature added after 8dd6c27.
NEW_FEATURES = (
    "timing_budget",  # --quant-timing-budget (3aeee1b)
    "compiled_step",  # the compiled decode mode and its check (980f126, c91703c)
    "recipe_pin",  # Recipe.decode_mode pins (19fba83)
    "auto_map",  # --quant-trust-remote-code and the auto_map start-up check (7a4a5df, 7403bdf)
    "own_code",
    "trust_option",
    "fp4_recipes",  # torchao/ModelOpt FP4 and compressed-tensors FP8 recipes (1459421)
    "cannot_run_on_cpu",
    "layer_error",  # the task_accuracy and layer_error markers (be1fa4a)
    "task_accuracy",
    "referrer_chains",  # vram.referrer_chains (471e700)
    "later_phase",  # per-phase seconds (b34a985)
)


def command(extra: list[str] | None = None) -> list[str]:
    ignores = [f"--ignore={path}" for path in NEW_MODULES]
    keywords = "not (" + " or ".join(NEW_FEATURES) + ")"
    return [sys.executable, "-m", "pytest", "tests", "-p", "no:cacheprovider", "-q", *ignores, "-k", keywords,
            *(extra or [])]


def main(argv: list[str]) -> None:
    if argv[:1] == ["--run"]:
        os.chdir(ROOT)
        cmd = command(argv[1:])
        os.execv(cmd[0], cmd)
    print(shlex.join(["python", *command(argv)[1:]]))


if __name__ == "__main__":
    main(sys.argv[1:])
