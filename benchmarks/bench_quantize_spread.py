"""How far apart cold quantizations of one GPTQ/AWQ recipe land: the spread a baseline tolerance must cover.

Each run quantizes the embedded model from scratch (its own empty cache dir, through
``pytest_quant.backends.load``, so in GPTQModel's child process exactly as the plugin does) and evaluates it
against the fp32/bf16 reference the way ``test_quality`` does (the embedded eval text, 8192 tokens, windows of
512, 8 windows per batch, the reference kept exactly). Per recipe it prints every run's perplexity, mean KL,
p99 KL and top-1 agreement, their min/max/spread, and whether the runs were bit-identical (sha256 of the
saved safetensors, and of the tensors alone).

    python benchmarks/bench_quantize_spread.py                       # CPU, 3 runs per recipe
    python benchmarks/bench_quantize_spread.py --device cuda --runs 3 --json spread.json
    python benchmarks/bench_quantize_spread.py --recipes gptq-w4g128 --child-env ATEN_CPU_CAPABILITY=default

``--child-env NAME=VALUE`` (repeatable) sets variables for the quantizing child only (the evaluation is
untouched), to see how other arithmetic moves the figures: ``PYTEST_QUANT_QUANTIZE_THREADS=1`` (another
thread count), ``ATEN_CPU_CAPABILITY=default`` with ``MKL_ENABLE_INSTRUCTIONS=SSE4_2`` (another CPU's
vector kernels).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPES = ("gptq-w4g128", "gptq-w8g128", "awq-w4g128")
METRICS = (("perplexity", "perplexity", "{:.4f}"), ("mean_kl_nats", "mean KL", "{:.6f}"),
           ("p99_kl_nats", "p99 KL", "{:.6f}"), ("top1_agreement_percent", "top-1 %", "{:.3f}"))
BASELINES = ROOT / "baselines" / "tiny"


def tensor_digest(path: Path) -> str:
    """sha256 over the tensors of a safetensors file (names, dtypes, shapes, bytes), not its metadata."""
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        for name in sorted(f.keys()):
            t = f.get_tensor(name).contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.view(-1).view(__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def checkpoint_digests(folder: Path) -> dict[str, str]:
    files = sorted(folder.glob("*.safetensors"))
    file_h, tensor_h = hashlib.sha256(), hashlib.sha256()
    for p in files:
        file_h.update(p.read_bytes())
        tensor_h.update(tensor_digest(p).encode())
    return {"safetensors_sha256": file_h.hexdigest(), "tensors_sha256": tensor_h.hexdigest()}


def committed_baseline(recipe: str, device: str) -> dict | None:
    path = BASELINES / ("cpu" if device == "cpu" else "cuda") / f"test_quality[tiny-{recipe}].json"
    if not path.is_file():
        matches = sorted((BASELINES).glob(f"*/test_quality[[]tiny-{recipe}[]].json"))
        matches = [m for m in matches if (device == "cpu") == (m.parent.name == "cpu")]
        if not matches:
            return None
        path = matches[0]
    data = json.loads(path.read_text())
    return {"file": str(path.relative_to(ROOT)), **data.get("metrics", {})}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES))
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child-env", action="append", default=[], metavar="NAME=VALUE")
    args = ap.parse_args()

    import torch

    from pytest_quant import backends
    from pytest_quant.backends.gptqmodel_spec import prepare_environment
    from pytest_quant.hardware import free_device_memory, hardware_name
    from pytest_quant.measure.quality import EvalSpec, evaluate, model_max_positions, prepare
    from pytest_quant.models import TINY_DIR, embedded_calibration_text, embedded_eval_text
    from pytest_quant.recipes import BUILTIN_RECIPES

    prepare_environment()
    device = "cuda:0" if args.device == "cuda" else "cpu"
    for item in args.child_env:
        name, _, value = item.partition("=")
        os.environ[name] = value  # read by the child only: this process's torch is already initialised
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": device,
        "machine": hardware_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads_eval": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "child_env": args.child_env,
        "versions": {m: __import__("importlib.metadata").metadata.version(m)
                     for m in ("torch", "transformers", "gptqmodel")},
    }
    print(json.dumps(info), flush=True)

    spec = EvalSpec(text_path=embedded_eval_text(), max_tokens=args.tokens)
    ref = backends.load(backends.LoadRequest(TINY_DIR, BUILTIN_RECIPES["reference"], device))
    windows = prepare(ref.tokenizer, spec, max_positions=model_max_positions(ref.model))
    ref_q, reference, _ = evaluate(ref.model, windows, 8, keep_reference_top_k="exact")
    print(f"reference perplexity {ref_q.perplexity:.4f} ({windows.tokens_scored} tokens)", flush=True)
    del ref
    free_device_memory(device)

    results: dict[str, dict] = {}
    for name in args.recipes:
        recipe = BUILTIN_RECIPES[name]
        runs = []
        for i in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="spread-cache-") as cache:
                start = time.perf_counter()
                loaded = backends.load(backends.LoadRequest(TINY_DIR, recipe, device, Path(cache),
                                                            embedded_calibration_text()))
                q, _, _ = evaluate(loaded.model, windows, 8, reference=reference)
                run = {
                    "run": i + 1,
                    "perplexity": q.perplexity,
                    "mean_kl_nats": q.mean_kl_nats,
                    "p99_kl_nats": q.p99_kl_nats,
                    "top1_agreement_percent": q.top1_agreement_percent,
                    "quantize_seconds": loaded.quantize_seconds,
                    "seconds": time.perf_counter() - start,
                    "kernel": loaded.kernel,
                    "cache": loaded.cache,
                    "cache_key": loaded.notes.get("cache_key"),
                    **checkpoint_digests(Path(loaded.notes["checkpoint"])),
                }
                del loaded
                gc.collect()
                free_device_memory(device)
            runs.append(run)
            print(json.dumps({"recipe": name, **run}), flush=True)
        summary = {}
        for key, _, _ in METRICS:
            values = [r[key] for r in runs]
            summary[key] = {"min": min(values), "max": max(values), "spread": max(values) - min(values),
                            "mean": statistics.fmean(values)}
        results[name] = {
            "runs": runs,
            "summary": summary,
            "bit_identical": len({r["tensors_sha256"] for r in runs}) == 1,
            "files_identical": len({r["safetensors_sha256"] for r in runs}) == 1,
            "committed_baseline": committed_baseline(name, args.device),
        }

    print()
    print(f"{info['date']}  {info['machine']}  device {device}  {args.runs} cold runs per recipe")
    header = f"| recipe | run | {' | '.join(label for _, label, _ in METRICS)} | quantize s | tensors sha256 |"
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for name, res in results.items():
        for r in res["runs"]:
            cells = " | ".join(fmt.format(r[k]) for k, _, fmt in METRICS)
            print(f"| {name} | {r['run']} | {cells} | {r['quantize_seconds']:.0f} | {r['tensors_sha256'][:12]} |")
        s = res["summary"]
        print(f"| {name} | min-max | " + " | ".join(f"{fmt.format(s[k]['min'])}-{fmt.format(s[k]['max'])}"
                                                     for k, _, fmt in METRICS) + " | | |")
        print(f"| {name} | spread | " + " | ".join(fmt.format(s[k]["spread"]) for k, _, fmt in METRICS)
              + f" | | bit-identical: {'yes' if res['bit_identical'] else 'no'} |")
        base = res["committed_baseline"]
        if base:
            cells = " | ".join(fmt.format(base[k]) if k in base else "-" for k, _, fmt in METRICS)
            print(f"| {name} | committed baseline | {cells} | | {base['file']} |")
            worst = " | ".join(fmt.format(max(abs(r[k] - base[k]) for r in res["runs"])) if k in base else "-"
                               for k, _, fmt in METRICS)
            print(f"| {name} | max abs diff vs baseline | {worst} | | |")
    if args.json:
        args.json.write_text(json.dumps({"info": info, "reference_perplexity": ref_q.perplexity,
                                         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
