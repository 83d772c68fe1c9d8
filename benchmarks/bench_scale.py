"""Figures at the sizes users ship: Llama models of the 1.1B and 8B shapes, random weights, built on the GPU.

Per shape and recipe: wall time by phase (build + save, load, evaluate, timing), host peak RSS, every VRAM
figure (resident, load peak, generate peak, eval peak, NVML, what is left after release), decode tokens/s
with its CV and mode (cuda-graph / eager), the roofline fraction, perplexity and KL against the compact
reference. Perplexity is meaningless on random weights; memory and speed are real.

    python benchmarks/bench_scale.py --shapes 1b,8b --recipes reference,bnb-nf4,bnb-int8 --eval-tokens 8192 \\
        --repeats 5 --json /tmp/scale.json
    python benchmarks/bench_scale.py --shapes 1b --recipes reference,bnb-nf4 --processes 5   # CV across processes
    python benchmarks/bench_scale.py --shapes toy --device cpu --eval-tokens 512             # a smoke test on CPU

Every recipe runs in a fresh process (host RSS and VRAM are its own); the reference writes its compact
reference to the model folder and the quantized recipes read it, as the plugin's cache does. gptq-w4g128
(transformers' GPTQConfig, quantized once into the model folder, loaded with backend "gptq_triton") runs
only where gptqmodel is importable. Calls pytest_quant.measure directly, not the plugin.

Measured on the lent H100 (2026-11-23, torch 2.11, transformers 5.23, bitsandbytes 0.50.2; 1b shape,
8192 eval tokens, 128 decode tokens, 2 warm-up + 5 timed runs, batch 1):

| recipe | load s | eval s | timing s | host RSS GiB | resident GiB | load peak | generate peak | eval peak | NVML | decode tok/s | CV % | mode | roofline |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
| reference | 9.2 | 1.2 | 3.4 | 2.97 | 2.00 | 2.00 | 2.08 | 2.66 | 2.88 | 395.2 | 0.048 | cuda-graph | 25.3% |
| bnb-nf4 | 14.3 | 0.7 | 2.8 | 3.05 | 0.70 | 0.72 | 0.80 | 1.36 | 1.59 | 415.2 | 0.022 | cuda-graph | 8.5% |

The graph's 32 greedy tokens equalled the static-cache eager step's for both, and differed from the
dynamic-cache eager loop's (random weights: near-flat bf16 logits, so argmax flips with the attention
kernel's rounding; on the embedded model the three paths agree, tests/test_measure_decode.py). That run
left 128 MiB allocated after release (cuBLAS workspaces of the capture's side streams); ``release`` now
clears them, not yet re-measured on the GPU. bnb-int8 and the 5-process CV were cut off by the call's time
limit (the per-process figures are now printed as they come).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_quant.models import TINY_DIR, embedded_calibration_text, embedded_eval_text  # noqa: E402

SHAPES = {
    "1b": dict(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
    "8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    "toy": dict(vocab_size=16384, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}
RECIPES = ("reference", "bnb-nf4", "bnb-int8", "gptq-w4g128")
PROMPT_TOKENS = 128
GREEDY_CHECK_TOKENS = 32  # graph-captured recipes: the graph's greedy tokens against the static and eager paths
REFERENCE_FILE = "reference.safetensors"
GIB, MIB = 2**30, 2**20


def model_dir(args, shape: str) -> Path:
    return Path(args.model_root) / f"bench-scale-{shape}"


def build(args, shape: str) -> float:
    """Random-weight model of ``shape`` in bf16 (fp32 on CPU), saved with the embedded tokenizer; seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    start = time.perf_counter()
    folder = model_dir(args, shape)
    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    config = LlamaConfig(**SHAPES[shape], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         max_position_embeddings=2048)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16 if args.device.startswith("cuda") else torch.float32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # 8192 tokens: the config's vocabulary is padded beyond it
    del model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return time.perf_counter() - start


def quantization_config(recipe: str, folder: Path, dtype, quantize: bool):
    from transformers import BitsAndBytesConfig, GPTQConfig

    if recipe == "bnb-nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    if recipe == "bnb-int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if recipe == "gptq-w4g128":
        if quantize:
            from transformers import AutoTokenizer

            text = embedded_calibration_text().read_text(encoding="utf-8")
            samples = [text[i : i + 2000] for i in range(0, 2000 * 64, 2000)]
            return GPTQConfig(bits=4, group_size=128, dataset=samples, tokenizer=AutoTokenizer.from_pretrained(folder))
        return GPTQConfig(bits=4, group_size=128, backend="gptq_triton")
    return None


def load(args, shape: str, recipe: str):
    import torch
    from transformers import AutoModelForCausalLM

    folder = model_dir(args, shape)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    if recipe == "gptq-w4g128":
        quantized = folder / "gptq-w4g128"
        if not quantized.exists():  # a one-off quantization, outside the measured load
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=dtype, device_map=args.device,
                quantization_config=quantization_config(recipe, folder, dtype, quantize=True))
            model.save_pretrained(quantized)
            del model
        folder = quantized
    config = quantization_config(recipe, folder, dtype, quantize=False)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map=args.device,
                                                quantization_config=config).eval()


def measure_recipe(args, shape: str, recipe: str, timing_only: bool) -> dict:
    """One recipe in this (fresh) process: load, evaluate, time decoding, release."""
    import torch
    from transformers import AutoTokenizer

    from pytest_quant.measure.quality import EvalSpec, evaluate, model_max_positions, prepare
    from pytest_quant.measure.reference import DEFAULT_TOP_K, load_reference, save_reference
    from pytest_quant.measure.roofline import memory_bandwidth_bytes_per_s, roofline_fraction
    from pytest_quant.measure.decode_check import greedy_tokens
    from pytest_quant.measure.throughput import measure_throughput
    from pytest_quant.measure.vram import EVALUATE, GENERATE, VramTracker, release

    cuda = args.device.startswith("cuda")
    if cuda:
        torch.zeros(1, device=args.device)  # the CUDA context, before anything is counted
    folder = model_dir(args, shape)
    before = release(args.device)
    tracker = VramTracker(args.device)
    start = time.perf_counter()
    model = load(args, shape, recipe)
    tracker.loaded()
    row: dict = {"shape": shape, "recipe": recipe, "load_s": time.perf_counter() - start}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    windows = prepare(tokenizer, EvalSpec(text_path=embedded_eval_text(), max_tokens=args.eval_tokens),
                      max_positions=model_max_positions(model))
    if not timing_only:
        key = f"{shape}:{windows.tokens_scored}:{windows.context_tokens}:{args.device.split(':')[0]}"
        cached = None if recipe == "reference" else load_reference(folder / REFERENCE_FILE, key)
        start = time.perf_counter()
        with tracker.phase(EVALUATE):
            quality, kept, _ = evaluate(model, windows, args.batch_windows, reference=cached[0] if cached else None,
                                        keep_reference_top_k=DEFAULT_TOP_K if recipe == "reference" else None)
        row["evaluate_s"] = time.perf_counter() - start
        if kept is not None:
            save_reference(folder / REFERENCE_FILE, kept, key)
            row["reference_kept_bytes"] = kept.nbytes
        row.update(perplexity=quality.perplexity, mean_kl_nats=quality.mean_kl_nats,
                   top1_agreement_percent=quality.top1_agreement_percent)
    prompt = list(windows.windows[0].input_ids[:PROMPT_TOKENS])
    start = time.perf_counter()
    with tracker.phase(GENERATE):
        throughput = measure_throughput(model, prompt, args.decode_tokens, args.repeats, args.warmup,
                                        batch_size=args.batch, mode=args.mode)
    row["timing_s"] = time.perf_counter() - start
    vram = tracker.read(model)
    if throughput.decode_mode == "cuda-graph" and not timing_only:
        graph = greedy_tokens(model, prompt, GREEDY_CHECK_TOKENS, "cuda-graph")
        row["graph_tokens_equal_static"] = graph == greedy_tokens(model, prompt, GREEDY_CHECK_TOKENS, "static")
        row["graph_tokens_equal_eager"] = graph == greedy_tokens(model, prompt, GREEDY_CHECK_TOKENS, "eager")
    footprint = int(model.get_memory_footprint())
    bandwidth = memory_bandwidth_bytes_per_s(args.device)
    row.update(
        resident_bytes=vram.resident_bytes, load_peak_bytes=vram.load_peak_bytes,
        generate_peak_bytes=vram.generate_peak_bytes, eval_peak_bytes=vram.eval_peak_bytes,
        nvml_process_bytes=vram.nvml_process_bytes, footprint_bytes=footprint,
        decode_tokens_per_s=throughput.decode_tokens_per_s,
        decode_tokens_per_s_per_sequence=throughput.decode_tokens_per_s_per_sequence,
        decode_cv_percent=throughput.decode_cv_percent, decode_mode=throughput.decode_mode,
        fallback_reason=throughput.fallback_reason, batch_size=throughput.batch_size,
        prefill_tokens_per_s=throughput.prefill_tokens_per_s,
        roofline_fraction=roofline_fraction(throughput.decode_tokens_per_s_per_sequence, footprint, bandwidth),
    )
    del model, tracker
    row["left_after_release_bytes"] = release(args.device) - before
    row["host_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return row


def child(args, shape: str, recipe: str, timing_only: bool) -> dict:
    """Run one recipe in a fresh process; its JSON row (or the error)."""
    command = [sys.executable, __file__, "--child", f"{shape}:{recipe}:{int(timing_only)}", *forwarded(args)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        return {"shape": shape, "recipe": recipe, "error": " | ".join(tail)}
    return json.loads(lines[-1])


def forwarded(args) -> list[str]:
    return ["--device", args.device, "--eval-tokens", str(args.eval_tokens), "--repeats", str(args.repeats),
            "--warmup", str(args.warmup), "--decode-tokens", str(args.decode_tokens), "--batch", str(args.batch),
            "--batch-windows", str(args.batch_windows), "--mode", args.mode, "--model-root", args.model_root]


def write_json(args, rows: list[dict], spreads: list[dict]) -> None:
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "processes": spreads}, indent=1))


def gib(value) -> str:
    return "" if value is None else f"{value / GIB:.2f}"


def seconds(value) -> str:
    return "" if value is None else f"{value:.1f}"


def table(rows: list[dict]) -> str:
    head = ("| shape | recipe | build+save s | load s | eval s | timing s | host RSS GiB | resident GiB | load peak GiB "
            "| generate peak GiB | eval peak GiB | NVML GiB | left MiB | decode tok/s | CV % | mode | roofline | "
            "perplexity | mean KL | note |")
    lines = [head, "|" + " --- |" * head.count(" | ") + " --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['recipe']} |" + " |" * 18 + f" {r['error'][:200]} |")
            continue
        kl = "" if r.get("mean_kl_nats") is None else f"{r['mean_kl_nats']:.4f}"
        ppl = "" if r.get("perplexity") is None else f"{r['perplexity']:.1f}"
        roof = "" if r.get("roofline_fraction") is None else f"{100 * r['roofline_fraction']:.1f}%"
        left = "" if r.get("left_after_release_bytes") is None else f"{r['left_after_release_bytes'] / MIB:.1f}"
        lines.append(
            f"| {r['shape']} | {r['recipe']} | {seconds(r.get('build_s'))} | {seconds(r['load_s'])} | "
            f"{seconds(r.get('evaluate_s'))} | {seconds(r['timing_s'])} | {gib(r['host_peak_rss_bytes'])} | "
            f"{gib(r['resident_bytes'])} | {gib(r['load_peak_bytes'])} | {gib(r['generate_peak_bytes'])} | "
            f"{gib(r['eval_peak_bytes'])} | {gib(r['nvml_process_bytes'])} | {left} | "
            f"{r['decode_tokens_per_s']:.1f} | {r['decode_cv_percent']:.2f} | {r['decode_mode']} | {roof} | {ppl} | "
            f"{kl} | {note(r)} |"
        )
    return "\n".join(lines)


def note(row: dict) -> str:
    parts = [row.get("fallback_reason") or ""]
    for path in ("static", "eager"):
        if f"graph_tokens_equal_{path}" in row:
            parts.append(f"graph tokens {'=' if row[f'graph_tokens_equal_{path}'] else '!='} {path}")
    return "; ".join(p for p in parts if p)


def available(recipe: str) -> bool:
    import importlib.util

    if recipe == "gptq-w4g128":
        return all(importlib.util.find_spec(name) for name in ("gptqmodel", "optimum"))
    if recipe.startswith("bnb"):
        return importlib.util.find_spec("bitsandbytes") is not None
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1b,8b", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--recipes", default="reference,bnb-nf4,bnb-int8,gptq-w4g128")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--batch-windows", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--mode", default="auto", choices=("auto", "eager", "cuda-graph"))
    parser.add_argument("--processes", type=int, default=0,
                        help="rerun each recipe's decode timing in this many fresh processes; print the CV across them")
    parser.add_argument("--model-root", default="/tmp")
    parser.add_argument("--json", type=Path, help="write every row here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        shape, recipe, timing_only = args.child.split(":")
        print(json.dumps(measure_recipe(args, shape, recipe, timing_only == "1")), flush=True)
        return 0

    recipes = [r for r in args.recipes.split(",") if r]
    unknown = [r for r in recipes if r not in RECIPES] + [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        parser.error(f"unknown recipe or shape: {', '.join(unknown)}")
    rows, spreads = [], []
    for shape in args.shapes.split(","):
        build_s = build(args, shape)
        print(f"{shape}: built and saved in {build_s:.1f} s", flush=True)
        for recipe in recipes:
            if not available(recipe):
                print(f"{shape} {recipe}: skipped (library not installed)", flush=True)
                continue
            row = child(args, shape, recipe, timing_only=False)
            row["build_s"] = build_s if recipe == recipes[0] else None
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.processes and "error" not in row and row["decode_mode"] == "eager" and args.device != "cpu":
                print(f"{shape} {recipe}: eager decoding, not rerun in {args.processes} processes", flush=True)
            elif args.processes and "error" not in row:
                medians = []
                for i in range(args.processes):
                    run = child(args, shape, recipe, timing_only=True)
                    if "error" in run:
                        print(f"{shape} {recipe}: {run['error']}", flush=True)
                        break
                    medians.append(run["decode_tokens_per_s"])
                    print(f"{shape} {recipe} process {i + 1}/{args.processes}: {run['decode_tokens_per_s']:.2f} tok/s "
                          f"({run['decode_mode']}, CV within {run['decode_cv_percent']:.3f}%)", flush=True)
                if len(medians) >= 2:
                    cv = 100 * statistics.pstdev(medians) / statistics.median(medians)
                    spreads.append({"shape": shape, "recipe": recipe, "mode": row["decode_mode"],
                                    "medians": medians, "cv_across_processes_percent": cv})
                    print(f"{shape} {recipe}: CV across {len(medians)} processes {cv:.3f}%", flush=True)
            write_json(args, rows, spreads)  # after every recipe: a run cut short keeps what it measured
    print()
    print(table(rows))
    if spreads:
        print("\n| shape | recipe | mode | decode tok/s per process | CV across processes % |\n| --- | --- | --- | --- | ---: |")
        for s in spreads:
            print(f"| {s['shape']} | {s['recipe']} | {s['mode']} | {', '.join(f'{m:.1f}' for m in s['medians'])} | "
                  f"{s['cv_across_processes_percent']:.3f} |")
    write_json(args, rows, spreads)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
