"""Gate wall time split by phase (load, quantize, evaluate, time), a cold run against a run with the
quantized-model cache warm.

Target on an H100: the second run at least 5x faster than the first for the GPTQ/AWQ recipes.

    python benchmarks/bench_gate_time.py --gpu                 # the shipped suite on CUDA, every recipe
    python benchmarks/bench_gate_time.py --recipes reference,gptq-w4g128 --eval-tokens 2048   # CPU

Runs ``pytest suites`` twice in subprocesses with one fresh ``--quant-cache-dir`` and reads the per-phase
seconds from the junit properties the plugin records (quant.load_s, quant.quantize_s, quant.eval_s,
quant.timing_s).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("load_s", "quantize_s", "eval_s", "timing_s")  # shown as load (without quantize), quantize, ...


def run_suite(extra: list[str], cache: Path, junit: Path) -> tuple[float, dict[str, dict[str, str]]]:
    cmd = [sys.executable, "-m", "pytest", "suites", "-q", "-p", "no:cacheprovider", f"--quant-cache-dir={cache}",
           f"--junitxml={junit}", *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"pytest exited {done.returncode}")
    pairs: dict[str, dict[str, str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        props = {p.get("name").removeprefix("quant."): p.get("value") for p in case.iter("property")}
        if "pair" in props:
            pairs.setdefault(props["pair"], {}).update(props)
    return wall, pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="pass --quant-gpu")
    parser.add_argument("--recipes", default=None, help="--quant-recipes (default: every installed recipe)")
    parser.add_argument("--eval-tokens", type=int, default=None)
    args = parser.parse_args(argv)
    extra = ["--quant-gpu"] if args.gpu else []
    if args.recipes:
        extra += ["--quant-recipes", args.recipes]
    if args.eval_tokens:
        extra += ["--quant-eval-tokens", str(args.eval_tokens)]
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp, "cache")
        runs = [run_suite(extra, cache, Path(tmp, f"junit{i}.xml")) for i in (1, 2)]
    print(f"{'pair':<24} {'run':>3} " + " ".join(f"{p:>11}" for p in PHASES) + f" {'cache':>7} {'sum s':>7}")
    sums = {}
    for i, (_, pairs) in enumerate(runs, 1):
        for pair, props in pairs.items():
            values = [float(props.get(p, 0) or 0) for p in PHASES]
            values[0] -= values[1]  # quant.load_s is the whole open, quantization included
            sums[(pair, i)] = sum(values)
            print(f"{pair:<24} {i:>3} " + " ".join(f"{v:>11.2f}" for v in values) + f" {props.get('cache', '-'):>7} {sum(values):>7.2f}")
    for i, (wall, _) in enumerate(runs, 1):
        print(f"run {i}: pytest wall {wall:.1f} s")
    quantized = sorted({pair for pair, _ in sums if "gptq" in pair or "awq" in pair})
    for pair in quantized:
        cold, warm = sums.get((pair, 1)), sums.get((pair, 2))
        if cold and warm:
            print(f"{pair}: cold {cold:.1f} s, cached {warm:.1f} s: {cold / warm:.1f}x (target >= 5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
