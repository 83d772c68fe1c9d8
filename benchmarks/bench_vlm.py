"""The seed's MiniCPM-V example (bnb-minicpm-v-int4.md) gated on an image-text-to-text model built from a config.

A random-weight LLaVA (SigLIP vision tower, two-layer projector, Llama; ``pytest_quant.models.build_vlm``) is
written to a temporary folder, with ``N_ANSWERS`` image prompts drawn by the plugin and saved as PNG files in a
JSONL ``--quant-images`` file. A model repository of the seed's five lines (``vram_budget(ratio=0.5)``,
``generation_agreement``, ``kl_divergence``) plus a decode-speed test is run by pytest under the reference,
``bnb-nf4-vlm`` (nf4, double quantization, the projector and the head skipped, as the seed skips MiniCPM-V's
resampler and head) and ``bnb-int8``; the JSON report's figures are printed as Markdown (RESULTS.md).

Random weights: KL, perplexity and the answers' text say nothing of a real model; the loading path, the memory
(whole model and language part), the decode speed with the image in the prefill and the time of the answers are real.

    .venv/bin/python benchmarks/bench_vlm.py                      # CPU, the tiny shape
    python3 benchmarks/bench_vlm.py --gpu --shape user --limit 520   # the H200: SigLIP-so400m-like + 1.3B Llama
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_ANSWERS = 10  # the seed times ten answers
ANSWER_TOKENS = 32
QUESTIONS = ("What is in this picture?", "What colour is the shape?", "Describe the picture in one sentence.")
TEST = f"""
import pytest

@pytest.mark.vram_budget(ratio=0.5)
@pytest.mark.generation_agreement(tokens={ANSWER_TOKENS}, min_prefix_tokens=1)
@pytest.mark.kl_divergence(max_mean=10.0)
def test_quantized(quant_model):
    assert quant_model.model is not None

@pytest.mark.tokens_per_second(min=0.1)
def test_decode_with_the_image_in_the_prefill(quant_model):
    assert quant_model.model is not None
"""
RECIPES = """
[tool.pytest-quant.recipes.bnb-nf4-vlm]
backend = "bitsandbytes"
load_in_4bit = true
bnb_4bit_quant_type = "nf4"
bnb_4bit_use_double_quant = true
llm_int8_skip_modules = ["model.multi_modal_projector", "lm_head"]
"""
RECIPE_NAMES = "reference,bnb-nf4-vlm,bnb-int8"


def write_images(folder: Path) -> Path:
    """``N_ANSWERS`` image prompts: the plugin's drawings saved as PNG, each with a question, as JSONL."""
    from pytest_quant.images import DRAWINGS, draw

    lines = []
    for i in range(N_ANSWERS):
        name = f"drawing-{i}.png"
        draw(i % len(DRAWINGS)).save(folder / name)
        lines.append(json.dumps({"image": name, "prompt": QUESTIONS[i % len(QUESTIONS)]}))
    (folder / "images.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "images.jsonl"


def run(shape: str, gpu: bool, limit_s: float | None = None, recipes: str = RECIPE_NAMES) -> dict:
    from pytest_quant.models.build_vlm import build_vlm

    work = Path(tempfile.mkdtemp(prefix="bench-vlm-"))
    start = time.perf_counter()
    model = build_vlm(work / f"{shape}-vlm", shape=shape, dtype="bfloat16" if gpu else "float32")
    built_s = time.perf_counter() - start
    images = write_images(work)
    (work / "test_seed.py").write_text(TEST)
    (work / "pyproject.toml").write_text(RECIPES)
    report = work / "report.json"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(work / "test_seed.py"),
               f"--quant-model={model}", f"--quant-recipes={recipes}", f"--quant-images={images}",
               f"--quant-report={report}", f"--quant-cache-dir={work / 'cache'}"] + (["--quant-gpu"] if gpu else [])
    start = time.perf_counter()
    log = open(work / "pytest.log", "w+")
    child = subprocess.Popen(command, cwd=work, stdout=log, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    try:
        code = child.wait(timeout=None if limit_s is None else max(1.0, limit_s - built_s))
    except subprocess.TimeoutExpired:  # pytest stops at SIGINT with its summary and report: what was measured
        child.send_signal(signal.SIGINT)
        code = child.wait()
    wall_s = time.perf_counter() - start
    log.seek(0)
    print(log.read()[-8000:], file=sys.stderr)
    if not report.is_file():
        raise SystemExit(f"no report: pytest exited {code}")
    rows = {r["recipe"]: r for r in json.loads(report.read_text())["results"]}
    return {"rows": rows, "exit": code, "built_s": built_s, "wall_s": wall_s, "shape": shape, "recipes": recipes}


def mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:.2f} MiB"


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_markdown(found: dict) -> None:
    rows = found["rows"]
    print(f"shape {found['shape']}: model built in {found['built_s']:.1f} s; pytest {found['wall_s']:.1f} s, "
          f"exit {found['exit']}\n")
    print("| recipe | whole model | language part | NVML process | decode tok/s (image in prefill) | prefill tok/s | "
          f"{N_ANSWERS} answers (s) | tokens generated | mean KL (nats) | top-1 % | answers equal % | result |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name in found["recipes"].split(","):
        r = rows.get(name, {})
        print(f"| {name} | {mib(r.get('vram_resident_bytes'))} | {mib(r.get('vram_language_bytes'))} | "
              f"{mib(r.get('nvml_process_bytes'))} | "
              f"{fmt(r.get('decode_tokens_per_s'), '.1f')} ({r.get('decode_mode', '-')}) | "
              f"{fmt(r.get('prefill_tokens_per_s'), '.1f')} | "
              f"{fmt(r.get('generation_s'), '.2f')} | {r.get('generation_tokens', '-')} | "
              f"{fmt(r.get('mean_kl_nats'), '.6f')} | {fmt(r.get('top1_agreement_percent'), '.2f')} | "
              f"{fmt(r.get('generation_exact_match_percent'), '.0f')} | {r.get('result', '-')} |")
    nf4, int8 = rows.get("bnb-nf4-vlm", {}).get("mean_kl_nats"), rows.get("bnb-int8", {}).get("mean_kl_nats")
    if nf4 is not None and int8 is not None:
        print(f"\nnf4 KL {nf4:.6f} > int8 KL {int8:.6f} > 0: {nf4 > int8 > 0}")
    print("\nBefore/after (first prompt, first tokens):\n")
    print("| recipe | prompt | answer |\n| --- | --- | --- |")
    sample = next((rows[n]["generation_sample"] for n in found["recipes"].split(",")[1:]
                   if (rows.get(n) or {}).get("generation_sample")), {})
    if sample:
        print(f"| reference | {sample['prompt']} | {sample['reference']} |")
    for name in found["recipes"].split(",")[1:]:
        s = rows.get(name, {}).get("generation_sample") or {}
        if s:
            print(f"| {name} | {s['prompt']} | {s['output']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="tiny", choices=("tiny", "user"))
    parser.add_argument("--gpu", action="store_true", help="run with --quant-gpu")
    parser.add_argument("--limit", type=float, default=None,
                        help="seconds for the whole run: pytest is interrupted (SIGINT) then, keeping its report")
    parser.add_argument("--recipes", default=RECIPE_NAMES, help=f"the reference first (default {RECIPE_NAMES})")
    args = parser.parse_args()
    if args.recipes.split(",")[0] != "reference":
        parser.error(f"--recipes {args.recipes!r}: the first must be reference (the answers' and the ratios' base)")
    print_markdown(run(args.shape, args.gpu, args.limit, args.recipes))


if __name__ == "__main__":
    main()
