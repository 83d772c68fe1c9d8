"""Stability of the numbers a gate trusts: decode tokens/s across separate processes, and peak VRAM as
the torch allocator sees it against NVML.

Targets on an H100: decode tokens/s coefficient of variation at most 2% over 5 processes (so a 10% floor
never flakes); allocator (reserved) peak and NVML's per-process growth within 5%.

    python benchmarks/bench_stability.py --device cuda --recipes reference,bnb-nf4 --processes 5
    python benchmarks/bench_stability.py --device cpu --recipes reference --processes 3     # runs anywhere

Each process loads the embedded model under one recipe exactly as the plugin does (pytest_quant.backends),
measures with pytest_quant.measure.throughput (warm-up, synchronised, repeated) and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_process(recipe_name: str, device: str) -> dict:
    import torch

    from pytest_quant import backends
    from pytest_quant.measure.quality import EvalSpec, evaluate, model_max_positions, prepare
    from pytest_quant.measure.throughput import measure_throughput
    from pytest_quant.measure.vram import VramTracker, nvml_process_bytes
    from pytest_quant.models import TINY_DIR, embedded_eval_text
    from pytest_quant.recipes import BUILTIN_RECIPES
    from pytest_quant.session import EVAL_BATCH_WINDOWS, PROMPT_TOKENS, THROUGHPUT

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.init()
        torch.zeros(1, device=device)  # the CUDA context, before NVML's "before" figure
    tracker = VramTracker(device)
    nvml_before = nvml_process_bytes(device) if cuda else None
    loaded = backends.load(backends.LoadRequest(TINY_DIR, BUILTIN_RECIPES[recipe_name], device))
    windows = prepare(loaded.tokenizer, EvalSpec(text_path=embedded_eval_text(), max_tokens=8192),
                      max_positions=model_max_positions(loaded.model))
    evaluate(loaded.model, windows, EVAL_BATCH_WINDOWS)
    vram = tracker.read(loaded.model)
    nvml_after = nvml_process_bytes(device) if cuda else None
    settings = THROUGHPUT["cuda" if cuda else "cpu"]
    prompt = list(windows.windows[0].input_ids[:PROMPT_TOKENS])
    t = measure_throughput(loaded.model, prompt, **settings)
    return {
        "recipe": recipe_name,
        "decode_tokens_per_s": t.decode_tokens_per_s,
        "decode_cv_within_percent": t.decode_cv_percent,
        "allocator_peak_bytes": vram.allocator_peak_bytes,
        "allocator_reserved_peak_bytes": vram.allocator_reserved_peak_bytes,
        "nvml_growth_bytes": None if nvml_before is None or nvml_after is None else nvml_after - nvml_before,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--recipes", default="reference,bnb-nf4")
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(one_process(args.child, args.device)))
        return 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    print(f"{'recipe':<12} {'decode tok/s per process':<48} {'CV %':>6}  {'alloc reserved MiB':>18} {'NVML growth MiB':>15} {'diff %':>7}")
    worst_cv, worst_vram = 0.0, 0.0
    for recipe in args.recipes.split(","):
        runs = []
        for _ in range(args.processes):
            out = subprocess.run([sys.executable, __file__, "--device", args.device, "--child", recipe],
                                 capture_output=True, text=True, env=env, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        rates = [r["decode_tokens_per_s"] for r in runs]
        cv = 100 * statistics.pstdev(rates) / statistics.mean(rates)
        worst_cv = max(worst_cv, cv)
        reserved = runs[-1]["allocator_reserved_peak_bytes"]
        nvml = runs[-1]["nvml_growth_bytes"]
        diff = None if not reserved or nvml is None else 100 * (nvml - reserved) / reserved
        if diff is not None:
            worst_vram = max(worst_vram, abs(diff))
        print(f"{recipe:<12} {' '.join(f'{r:.0f}' for r in rates):<48} {cv:>6.2f}  "
              f"{(reserved or 0) / 2**20:>18.1f} {((nvml or 0) / 2**20):>15.1f} {('-' if diff is None else f'{diff:+.1f}'):>7}")
    print(f"worst decode CV across processes: {worst_cv:.2f}% (target <= 2% on an H100)")
    if args.device.startswith("cuda"):
        print(f"worst allocator-reserved vs NVML difference: {worst_vram:.1f}% (target <= 5%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
