"""Decode as deployed against decode as the plugin timed it: cuda-graph and compiled mode side by side, in
one process per recipe, at the 1.1B (or 8B) shape with random weights built on the GPU.

Per recipe, loaded through the plugin's own backends (so the VRAM tracker starts where the session starts
it, at ``LoadRequest.before_load``): resident VRAM from the allocator and the model's own tensors on the
device, the load peak, decode tok/s in cuda-graph mode and then in compiled mode (128 steps, 3 warm-up + 5
timed runs, batch 1), the compile's seconds and inductor cache status, the roofline fraction of each, and
the allocator bytes left after the release. A second pass runs every recipe again in a fresh process with
the same inductor cache directory ("warm"): compiled mode only, to show what the cache saves.

    python benchmarks/bench_decode_modes.py --recipes reference,bnb-nf4,torchao-int8wo,gptq-w4g128 \\
        --inductor-dir /tmp/inductor --json /tmp/modes.json
    python benchmarks/bench_decode_modes.py --shape toy --device cpu --recipes reference --decode-tokens 8  # smoke

Compile seconds are the first compiled step's (dynamo's trace, inductor's code generation, Triton's
kernel builds); with ``--no-compile`` installs the Python imports inside them are slower than in a normal
install.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_scale  # noqa: E402 - the shapes and the model builder

PROMPT_TOKENS = 128
GIB, MIB = 2**30, 2**20


def measure(args, recipe_name: str, warm: bool) -> dict:
    """One recipe in this (fresh) process."""
    import torch

    from pytest_quant.backends import DEFAULT_REGISTRY, LoadRequest
    from pytest_quant.measure.roofline import memory_bandwidth_bytes_per_s, roofline_fraction
    from pytest_quant.measure.throughput import measure_throughput, pinned_mode
    from pytest_quant.measure.vram import GENERATE, VramTracker, release
    from pytest_quant.models import embedded_calibration_text
    from pytest_quant.recipes import BUILTIN_RECIPES

    device = "cuda:0" if args.device.startswith("cuda") else "cpu"
    if device != "cpu":
        torch.zeros(1, device=device)  # the CUDA context, before anything is counted
    recipe = BUILTIN_RECIPES[recipe_name]
    folder = bench_scale.model_dir(args, args.shape)
    before = release(device)
    trackers: list = []
    start = time.perf_counter()
    loaded = DEFAULT_REGISTRY[recipe.backend].load_model(LoadRequest(
        model_path=folder, recipe=recipe, device=device, cache_dir=Path(args.quant_cache_dir),
        calibration_text=embedded_calibration_text(), before_load=lambda: trackers.append(VramTracker(device))))
    tracker = trackers.pop()
    tracker.loaded()
    row: dict = {"recipe": recipe_name, "pass": "warm" if warm else "cold", "load_s": time.perf_counter() - start,
                 "quantize_s": loaded.quantize_seconds, "kernel": loaded.kernel}
    prompt = list(range(5, 5 + PROMPT_TOKENS))
    footprint = int(loaded.model.get_memory_footprint())
    bandwidth = memory_bandwidth_bytes_per_s(device)
    modes = ["compiled"] if warm else ["cuda-graph", "compiled"]
    for asked in modes:
        mode = pinned_mode(asked, None if args.ignore_pins else recipe.decode_mode, torch.device(device))
        if mode == "cuda-graph" and device == "cpu":
            continue
        with tracker.phase(GENERATE):
            t = measure_throughput(loaded.model, prompt, args.decode_tokens, args.repeats, args.warmup, mode=mode,
                                   compile_cache_dir=args.inductor_dir)
        row[asked] = {"decode_mode": t.decode_mode, "decode_tokens_per_s": t.decode_tokens_per_s,
                      "decode_cv_percent": t.decode_cv_percent, "compile_s": t.compile_s,
                      "compile_cache": t.compile_cache, "fallback_reason": t.fallback_reason,
                      "roofline_fraction": roofline_fraction(t.decode_tokens_per_s, footprint, bandwidth),
                      "left_after_decode_bytes": release(device) - before - (tracker.resident_bytes or 0)}
        if asked == "compiled":  # where the compile's seconds went (dynamo's phases; compile_s less dynamo's
            # _compile.compile_inner is the first run: autotuning, the graph's capture) and which caches hit
            from torch._dynamo.utils import compilation_time_metrics, counters

            phases = {name: round(sum(seconds), 2) for name, seconds in compilation_time_metrics.items()}
            row[asked]["compile_phases"] = dict(sorted(phases.items(), key=lambda kv: -kv[1])[:14])
            row[asked]["cache_counters"] = {group: dict(counters[group]) for group in ("inductor", "aot_autograd")}
        print(f"{recipe_name} {row['pass']} {asked}: {row[asked]}", flush=True)
    vram = tracker.read(loaded.model)
    row.update(resident_bytes=vram.resident_bytes, model_device_bytes=vram.model_device_bytes,
               load_peak_bytes=vram.load_peak_bytes, generate_peak_bytes=vram.generate_peak_bytes,
               nvml_process_bytes=vram.nvml_process_bytes, footprint_bytes=footprint)
    del loaded, tracker, vram
    row["left_after_release_bytes"] = release(device) - before
    return row


def child(args, recipe: str, warm: bool) -> dict:
    """One recipe and pass in a fresh process; its per-mode lines are printed as they come (a call cut by the
    device's limit keeps what was measured), its last JSON line is the row."""
    import threading

    command = [sys.executable, __file__, "--child", f"{recipe}:{int(warm)}", *forwarded(args)]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(args.child_timeout, proc.kill)
    timer.start()
    rows, tail = [], []
    for line in proc.stdout:
        if line.startswith("{"):
            rows.append(line)
        else:
            tail = (tail + [line.rstrip()])[-4:]
            if line.startswith(f"{recipe} "):
                print(line.rstrip(), flush=True)
    code = proc.wait()
    timer.cancel()
    if code != 0 or not rows:
        return {"recipe": recipe, "pass": "warm" if warm else "cold", "error": f"exit {code}: " + " | ".join(tail)}
    row = json.loads(rows[-1])
    row["process_s"] = time.perf_counter() - start
    return row


def forwarded(args) -> list[str]:
    return ["--shape", args.shape, "--device", args.device, "--decode-tokens", str(args.decode_tokens),
            "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--model-root", args.model_root,
            "--inductor-dir", str(args.inductor_dir), "--quant-cache-dir", str(args.quant_cache_dir),
            *(["--ignore-pins"] if args.ignore_pins else [])]


def fmt(value, scale: float = 1.0, digits: int = 1) -> str:
    return "" if value is None else f"{value / scale:.{digits}f}"


def table(rows: list[dict]) -> str:
    head = ("| recipe | pass | cuda-graph tok/s | compiled tok/s | compiled / graph | compile s | cache | roofline graph "
            "| roofline compiled | resident GiB | model tensors GiB | load peak GiB | left MiB | note |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['recipe']} | {r['pass']} |" + " |" * 11 + f" {r['error'][:240]} |")
            continue
        g, c = r.get("cuda-graph", {}), r.get("compiled", {})
        ratio = (c["decode_tokens_per_s"] / g["decode_tokens_per_s"]
                 if g.get("decode_tokens_per_s") and c.get("decode_tokens_per_s") else None)
        notes = [f"{k}: ran {v['decode_mode']} ({v['fallback_reason']})" for k, v in (("graph", g), ("compiled", c))
                 if v.get("fallback_reason")]
        pct = lambda v: "" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        lines.append(
            f"| {r['recipe']} | {r['pass']} | {fmt(g.get('decode_tokens_per_s'))} | {fmt(c.get('decode_tokens_per_s'))} "
            f"| {fmt(ratio, digits=2)} | {fmt(c.get('compile_s'))} | {c.get('compile_cache', '')} "
            f"| {pct(g.get('roofline_fraction'))} | {pct(c.get('roofline_fraction'))} | {fmt(r['resident_bytes'], GIB, 2)} "
            f"| {fmt(r['model_device_bytes'], GIB, 2)} | {fmt(r['load_peak_bytes'], GIB, 2)} "
            f"| {fmt(r['left_after_release_bytes'], MIB, 2)} | {'; '.join(notes)[:240]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1b", choices=sorted(bench_scale.SHAPES))
    parser.add_argument("--recipes", default="reference,bnb-nf4,torchao-int8wo,gptq-w4g128")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--passes", default="cold,warm", help="cold (cuda-graph + compiled), warm (compiled again)")
    parser.add_argument("--model-root", default="/tmp")
    parser.add_argument("--inductor-dir", type=Path, default=Path("/tmp/bench-inductor"))
    parser.add_argument("--quant-cache-dir", type=Path, default=Path("/tmp/bench-qcache"))
    parser.add_argument("--ignore-pins", action="store_true", help="compile recipes that pin cuda-graph (torchao-fp8)")
    parser.add_argument("--child-timeout", type=float, default=580)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        recipe, warm = args.child.split(":")
        print(json.dumps(measure(args, recipe, warm == "1")), flush=True)
        return 0
    if not bench_scale.model_dir(args, args.shape).is_dir():
        print(f"{args.shape}: built and saved in {bench_scale.build(args, args.shape):.1f} s", flush=True)
    rows = []
    for warm in [p == "warm" for p in args.passes.split(",")]:
        for recipe in args.recipes.split(","):
            row = child(args, recipe, warm)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    print()
    print(table(rows))
    cold = sum(r.get("compiled", {}).get("compile_s") or 0 for r in rows if r["pass"] == "cold")
    warm = sum(r.get("compiled", {}).get("compile_s") or 0 for r in rows if r["pass"] == "warm")
    if cold and warm:
        print(f"\ncompile seconds in total: cold {cold:.1f}, warm {warm:.1f} ({100 * (1 - warm / cold):.0f}% saved)")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
