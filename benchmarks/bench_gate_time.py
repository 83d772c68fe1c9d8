"""Gate wall time split by phase (import, load, quantize, evaluate, compile, time, release), a cold run against a
run with the quantized-model cache warm.

Target on an H100: the second run at least 5x faster than the first for the GPTQ/AWQ recipes.

    python benchmarks/bench_gate_time.py --gpu                 # the shipped suite on CUDA, every recipe
    python benchmarks/bench_gate_time.py --recipes reference,gptq-w4g128 --eval-tokens 2048   # CPU

Runs ``pytest suites`` twice in subprocesses with one fresh ``--quant-cache-dir`` and reads the per-phase
seconds from the JSON report (``--quant-report``): import_s (the backend's libraries, first pair of a backend
only), load_s (quantization included, shown without it), quantize_s, eval_s, decode_compile_s (torch.compile
of the decode step), timing_s (the timed decode, its compile included, shown without it) and release_s.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("import_s", "load_s", "quantize_s", "eval_s", "decode_compile_s", "timing_s", "release_s")


def run_suite(extra: list[str], cache: Path, report: Path) -> tuple[float, dict[str, dict]]:
    cmd = [sys.executable, "-m", "pytest", "suites", "-q", "-p", "no:cacheprovider", f"--quant-cache-dir={cache}",
           f"--quant-report={report}", *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"pytest exited {done.returncode}")
    return wall, rows_of(report)


def rows_of(report: Path) -> dict[str, dict]:
    """A JSON report's rows by pair id."""
    return {f"{row['model']}-{row['recipe']}": row for row in json.loads(report.read_text())["results"]}


def phases(row: dict) -> list[float]:
    """The row's seconds per phase, each counted once: load without quantization, timing without the compile."""
    values = {p: float(row.get(p) or 0) for p in PHASES}
    values["load_s"] -= values["quantize_s"]
    values["timing_s"] -= values["decode_compile_s"]
    return [values[p] for p in PHASES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="pass --quant-gpu")
    parser.add_argument("--recipes", default=None, help="--quant-recipes (default: every installed recipe)")
    parser.add_argument("--eval-tokens", type=int, default=None)
    parser.add_argument("--show", nargs="+", type=Path, metavar="REPORT.json",
                        help="print the table of runs made already (their --quant-report JSON, cold first), run nothing")
    args = parser.parse_args(argv)
    if args.show:
        return show([(None, rows_of(path)) for path in args.show])
    extra = ["--quant-gpu"] if args.gpu else []
    if args.recipes:
        extra += ["--quant-recipes", args.recipes]
    if args.eval_tokens:
        extra += ["--quant-eval-tokens", str(args.eval_tokens)]
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp, "cache")
        runs = [run_suite(extra, cache, Path(tmp, f"report{i}.json")) for i in (1, 2)]
    return show(runs)


def show(runs: list[tuple[float | None, dict[str, dict]]]) -> int:
    print(f"{'pair':<24} {'run':>3} " + " ".join(f"{p:>11}" for p in PHASES) + f" {'cache':>7} {'sum s':>7}")
    sums = {}
    for i, (_, pairs) in enumerate(runs, 1):
        for pair, props in pairs.items():
            values = phases(props)
            sums[(pair, i)] = sum(values)
            print(f"{pair:<24} {i:>3} " + " ".join(f"{v:>11.2f}" for v in values) + f" {props.get('cache', '-'):>7} {sum(values):>7.2f}")
    for i, (wall, _) in enumerate(runs, 1):
        if wall is not None:
            print(f"run {i}: pytest wall {wall:.1f} s")
    quantized = sorted({pair for pair, _ in sums if "gptq" in pair or "awq" in pair})
    for pair in quantized:
        cold, warm = sums.get((pair, 1)), sums.get((pair, 2))
        if cold and warm:
            print(f"{pair}: cold {cold:.1f} s, cached {warm:.1f} s: {cold / warm:.1f}x (target >= 5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
