"""KL divergence from the compact reference (top k, the tail's mass and k tail samples) against the exact KL.

Target: the compact mean KL within 1% (relative) of the exact one at the default k
(pytest_quant.measure.reference.DEFAULT_TOP_K), on real quantizations of the embedded model (bitsandbytes
nf4 and LLM.int8, on CPU), with the kept reference for 8192 tokens at a 128k vocabulary at most 64 MiB.
The "bucket only" columns drop the tail samples (top k + one bucket for the rest), to show why they are kept.

    .venv/bin/python benchmarks/bench_compact_kl.py                     # 8192 tokens, CPU, a few minutes
    .venv/bin/python benchmarks/bench_compact_kl.py --device cuda --ks 16,64,256

The reference and each quantized model are evaluated once with every log-probability kept
(pytest_quant.measure.quality.evaluate, keep_reference_top_k="exact"); each k's compact reference is cut from
the exact one (measure.reference.compact) and its KL taken with measure.reference.kl_nats, the function
evaluate uses. At the default k each model is also evaluated end to end against the compact reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_quant.measure.reference import DEFAULT_TOP_K, compact, kept_bytes, kl_nats  # noqa: E402
from pytest_quant.models import TINY_DIR, embedded_eval_text  # noqa: E402

RECIPES = {
    "bnb-nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    "bnb-int8": dict(load_in_8bit=True),
}
LIMIT_PERCENT = 1.0
CEILING_BYTES = 64 * 2**20
CHUNK = 512


def load(recipe: str, device: str):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    config = None
    if recipe != "reference":
        options = dict(RECIPES[recipe])
        if options.get("load_in_4bit"):
            options["bnb_4bit_compute_dtype"] = dtype
        config = BitsAndBytesConfig(**options)
    model = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=dtype, quantization_config=config, device_map=device)
    return model.eval()


def kl_per_token(reference, model_logprobs):
    import torch

    return torch.cat([kl_nats(reference, start, model_logprobs[start : start + CHUNK])
                      for start in range(0, reference.tokens_scored, CHUNK)])


def kl_bucket_only(reference, model_logprobs):
    """sum over the top k of p log(p/q) + r log(r/q_tail): the tail samples ignored."""
    import torch

    from pytest_quant.measure.reference import _outside_logmass

    parts = []
    for start in range(0, reference.tokens_scored, CHUNK):
        rows = slice(start, start + CHUNK)
        q = model_logprobs[rows]
        ref = reference.topk_logprobs[rows]
        idx = reference.topk_indices[rows].long()
        p = ref.exp()
        top = torch.where(p > 0, p * (ref - q.gather(1, idx)), 0.0).sum(-1, dtype=torch.float64)
        tail = reference.tail_logmass[rows].double()
        parts.append(top + tail.exp() * (tail - _outside_logmass(q, idx).double()))
    return torch.cat(parts)


def percentile(values, q: float) -> float:
    import numpy as np

    return float(np.percentile(values.numpy(), q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--ks", default="16,32,64,128,256,511", help="comma-separated k values")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    args = parser.parse_args(argv)
    ks = sorted({int(k) for k in args.ks.split(",")} | {DEFAULT_TOP_K})
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "MatMul8bitLt: inputs will be cast", every call

    from transformers import AutoTokenizer

    from pytest_quant.measure.quality import EvalSpec, evaluate, model_max_positions, prepare

    reference_model = load("reference", args.device)
    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    windows = prepare(tokenizer, EvalSpec(text_path=embedded_eval_text(), max_tokens=args.eval_tokens),
                      max_positions=model_max_positions(reference_model))
    ref_quality, exact_reference, _ = evaluate(reference_model, windows, keep_reference_top_k="exact")
    del reference_model
    compact_references = {k: compact(exact_reference, k) for k in ks}
    n = windows.tokens_scored
    print(f"embedded model, vocab {exact_reference.vocab_size}, {n} tokens scored, reference perplexity "
          f"{ref_quality.perplexity:.3f}; exact reference kept here: {exact_reference.nbytes / 2**20:.1f} MiB, "
          f"at 8192 tokens x 128,256 vocab: {8192 * 128256 * 4 / 2**20:.0f} MiB\n")
    print("| recipe | k | mean KL exact (nats) | compact | error % | bucket only | error % | p99 KL exact | "
          "compact | error % | median per-token error % | kept MiB (8192 tokens, any vocab) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    worst = {k: 0.0 for k in ks}
    for recipe in args.recipes.split(","):
        model = load(recipe, args.device)
        exact, model_logprobs, exact_scores = evaluate(model, windows, reference=exact_reference,
                                                        keep_reference_top_k="exact")
        exact_kl = exact_scores.kl_nats
        for k in ks:
            kl = kl_per_token(compact_references[k], model_logprobs.topk_logprobs)
            bucket = kl_bucket_only(compact_references[k], model_logprobs.topk_logprobs)
            error = 100.0 * (float(kl.mean()) / float(exact_kl.mean()) - 1.0)
            bucket_error = 100.0 * (float(bucket.mean()) / float(exact_kl.mean()) - 1.0)
            p99, p99_exact = percentile(kl, 99), percentile(exact_kl, 99)
            per_token = (100.0 * (kl - exact_kl).abs() / exact_kl.clamp_min(1e-12)).median()
            worst[k] = max(worst[k], abs(error))
            print(f"| {recipe} | {k} | {float(exact_kl.mean()):.6f} | {float(kl.mean()):.6f} | {error:+.3f} | "
                  f"{float(bucket.mean()):.6f} | {bucket_error:+.2f} | {p99_exact:.5f} | {p99:.5f} | "
                  f"{100 * (p99 / p99_exact - 1):+.3f} | {float(per_token):.2f} | {kept_bytes(8192, k) / 2**20:.1f} |")
        del model_logprobs
        end_to_end, _, _ = evaluate(model, windows, reference=compact_references[DEFAULT_TOP_K])
        same = dataclasses.replace(end_to_end, seconds=exact.seconds, mean_kl_nats=exact.mean_kl_nats,
                                   p99_kl_nats=exact.p99_kl_nats, reference_top_k=None) == exact
        print(f"| {recipe} | {DEFAULT_TOP_K} via evaluate() | {exact.mean_kl_nats:.6f} | {end_to_end.mean_kl_nats:.6f} | "
              f"{100 * (end_to_end.mean_kl_nats / exact.mean_kl_nats - 1):+.3f} | | | {exact.p99_kl_nats:.5f} | "
              f"{end_to_end.p99_kl_nats:.5f} | | | perplexity and top-1 identical: {same} |")
        del model
    print()
    for k in ks:
        ok = worst[k] <= LIMIT_PERCENT and kept_bytes(8192, k) <= CEILING_BYTES
        mark = " (default)" if k == DEFAULT_TOP_K else ""
        print(f"k={k}{mark}: worst |mean KL error| {worst[k]:.3f}% (limit {LIMIT_PERCENT}%), kept "
              f"{kept_bytes(8192, k) / 2**20:.1f} MiB at 8192 tokens (ceiling 64 MiB): {'ok' if ok else 'FAILS'}")
    return 0 if worst[DEFAULT_TOP_K] <= LIMIT_PERCENT else 1


if __name__ == "__main__":
    sys.exit(main())
