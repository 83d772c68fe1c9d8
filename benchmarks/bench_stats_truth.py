"""Statistics truth: ``pytest_quant.measure.stats`` against an independent, naive recomputation of every figure.

For the embedded tiny model against bitsandbytes nf4 and LLM.int8 loads of it (CPU by default), one forward
pass per model over lm-evaluation-harness's rolling windows (the ones ``pytest_quant.measure.quality.prepare``
makes; cut here by a loop of our own and checked against ``prepare`` when it imports) feeds two code paths:

1. stats.py: per-token arrays computed as the plugin's ``evaluate`` does (log-softmax, float64 sums), passed
   to ``quality_stats``, ``upper_bound`` and ``wilson_lower_bound``; once with a float64 log-softmax, which
   checks the statistics' formulas, and once with evaluate's float32 one, which shows what float32 per-token
   values can resolve (small per-token KL values and the mean of delta-p are differences of nearly equal
   float32 log-probabilities, good to about 1e-6 nats).
2. naive: float64 softmax probabilities, -log p(target), sum p log(p/q), p - p_base, argmax; then llama.cpp's
   running sums (sum x, sum x^2, sum x*y), its mean_and_uncertainty and covariance formulas, its median and
   its percentile interpolation, written out here in plain Python.

LLM.int8 picks its outlier columns over the whole batch, so its figures depend on how many windows are scored
together: ``--batch-windows`` sets it (the plugin's default is 8; 1 scores one window at a time).

    .venv/bin/python benchmarks/bench_stats_truth.py --tokens 8192 --batch-windows 8
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pytest_quant.models import TINY_DIR, embedded_eval_text  # noqa: E402
from pytest_quant.measure.quality import EvalSpec  # noqa: E402

EVAL_BATCH_WINDOWS = EvalSpec(Path()).batch_windows  # the plugin's eval batch: EvalSpec's default

RECIPES = {
    "bnb-nf4": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
    "bnb-int8": {"load_in_8bit": True, "llm_int8_threshold": 6.0},
}
CONFIDENCE = 0.95


def load(device: str, recipe: str | None):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = torch.float32 if device == "cpu" else torch.float16
    kwargs = {}
    if recipe is not None:
        options = dict(RECIPES[recipe])
        if options.get("load_in_4bit"):
            options["bnb_4bit_compute_dtype"] = dtype
        kwargs["quantization_config"] = BitsAndBytesConfig(**options)
    model = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=dtype, device_map=device, **kwargs)
    return model.eval()


def windows_of(tokens: list[int], prefix: int, context: int) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) pairs scoring every token once: lm-eval's rolling windows with stride == context."""
    windows = [([prefix] + tokens[: context - 1], tokens[:context])]
    done = min(context, len(tokens))
    while done < len(tokens):
        end = min(done + context, len(tokens))
        windows.append((tokens[end - context - 1 : end - 1], tokens[done:end]))
        done = end
    return windows


def check_against_prepare(tokenizer, windows, tokens: int, context: int) -> str:
    try:
        from pytest_quant.measure.quality import EvalSpec, prepare

        prepared = prepare(tokenizer, EvalSpec(embedded_eval_text(), max_tokens=tokens, context_tokens=context))
        theirs = [(list(w.input_ids), list(w.target_ids)) for w in prepared.windows]
    except Exception as error:  # quality.py may be mid-change; the benchmark does not depend on it
        return f"not checked ({type(error).__name__}: {error})"
    return "identical" if theirs == windows else "DIFFERENT"


def scored_logits(model, windows, batch_windows: int):
    """Each window's scored positions' logits (float32, CPU), batching consecutive equal-length windows."""
    import torch

    device = next(model.parameters()).device
    batch: list = []

    def run(batch):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([w[0] for w in batch], device=device), use_cache=False).logits
        return [logits[row, -len(w[1]) :].float().cpu() for row, w in enumerate(batch)]

    for window in windows:
        if batch and (len(batch) == batch_windows or len(window[0]) != len(batch[0][0])):
            yield from zip(batch, run(batch))
            batch = []
        batch.append(window)
    if batch:
        yield from zip(batch, run(batch))


def plugin_arrays(logits, reference_logits, targets, dtype):
    """Path 1's per-token arrays as evaluate() makes them (log-softmax in ``dtype``, evaluate's is float32)."""
    import torch

    logprobs = logits.to(dtype).log_softmax(dim=-1)
    reference = reference_logits.to(dtype).log_softmax(dim=-1)
    p_reference = reference.exp()
    kl = torch.where(p_reference > 0, p_reference * (reference - logprobs), 0.0).sum(dim=-1, dtype=torch.float64)
    index = targets[:, None]
    return (
        logprobs.gather(1, index)[:, 0].double(),
        reference.gather(1, index)[:, 0].double(),
        kl,
        reference.argmax(dim=-1) == logprobs.argmax(dim=-1),
    )


def naive_tokens(logits, reference_logits, targets) -> list[tuple[float, float, float, float, bool]]:
    """Path 2's per-token values in float64: (nll, nll_base, kl, delta_p, same_top)."""
    q = logits.double().softmax(dim=-1)
    p = reference_logits.double().softmax(dim=-1)
    kl = (p * (p.log() - q.log())).nan_to_num(nan=0.0).sum(dim=-1)
    rows = []
    for i, t in enumerate(targets.tolist()):
        q_t, p_t = float(q[i, t]), float(p[i, t])
        rows.append((-math.log(q_t), -math.log(p_t), float(kl[i]), q_t - p_t, int(q[i].argmax()) == int(p[i].argmax())))
    return rows


def naive_statistics(rows) -> dict[str, float]:
    """llama.cpp's kl_divergence() figures from running sums, in plain Python."""
    n = len(rows)
    s = {k: 0.0 for k in ("nll", "nll2", "base", "base2", "nll_base", "kl", "kl2", "dp", "dp2", "dp4")}
    same = 0
    for nll, base, kl, dp, top in rows:
        s["nll"] += nll; s["nll2"] += nll * nll; s["base"] += base; s["base2"] += base * base  # noqa: E702
        s["nll_base"] += nll * base; s["kl"] += kl; s["kl2"] += kl * kl  # noqa: E702
        s["dp"] += dp; s["dp2"] += dp * dp; s["dp4"] += dp**4; same += top  # noqa: E702

    def mean_unc(total, total2):
        f = total / n
        return f, math.sqrt(max(total2 / n - f * f, 0.0) / (n - 1))

    def percentile(ordered, fraction):
        position = fraction * (len(ordered) - 1)
        low = int(position)
        return (1 - (position - low)) * ordered[low] + (position - low) * ordered[min(low + 1, len(ordered) - 1)]

    def median(ordered):
        m = len(ordered) // 2
        return ordered[m] if len(ordered) % 2 else 0.5 * (ordered[m] + ordered[m - 1])

    log_ppl, log_ppl_unc = mean_unc(s["nll"], s["nll2"])
    log_base, log_base_unc = mean_unc(s["base"], s["base2"])
    cov = (s["nll_base"] / n - (s["nll"] / n) * (s["base"] / n)) / (n - 1)
    ppl, base = math.exp(log_ppl), math.exp(log_base)
    ratio_unc = math.sqrt(max(log_ppl_unc**2 + log_base_unc**2 - 2 * cov, 0.0))
    out = {
        "tokens_scored": n,
        "nll_nats_per_token": log_ppl, "nll_se_nats_per_token": log_ppl_unc,
        "perplexity": ppl, "perplexity_se": ppl * log_ppl_unc,
        "reference_perplexity": base, "reference_perplexity_se": base * log_base_unc,
        "ln_perplexity_correlation": cov / (log_ppl_unc * log_base_unc),
        "ln_perplexity_ratio": log_ppl - log_base, "ln_perplexity_ratio_se": ratio_unc,
        "reference_nll_nats_per_token": log_base,
        "perplexity_ratio": math.exp(log_ppl - log_base),
        "perplexity_ratio_se": math.exp(log_ppl - log_base) * ratio_unc,
        "perplexity_difference": ppl - base,
        "perplexity_difference_se": math.sqrt(max((ppl * log_ppl_unc) ** 2 + (base * log_base_unc) ** 2
                                                  - 2 * ppl * base * cov, 0.0)),
    }
    out["mean_kl_nats"], out["mean_kl_se_nats"] = mean_unc(s["kl"], s["kl2"])
    kl = sorted(r[2] for r in rows)
    out["max_kl_nats"], out["min_kl_nats"], out["median_kl_nats"] = kl[-1], kl[0], median(kl)
    for name, q in (("p999", 0.999), ("p99", 0.99), ("p95", 0.95), ("p90", 0.90), ("p10", 0.10), ("p5", 0.05),
                    ("p1", 0.01), ("p01", 0.001)):
        out[f"{name}_kl_nats"] = percentile(kl, q)
    mean_dp, mean_dp_unc = mean_unc(s["dp"], s["dp2"])
    mse, mse_unc = mean_unc(s["dp2"], s["dp4"])
    out["mean_delta_p_percent"], out["mean_delta_p_se_percent"] = 100 * mean_dp, 100 * mean_dp_unc
    out["rms_delta_p_percent"] = 100 * math.sqrt(mse)
    out["rms_delta_p_se_percent"] = 100 * 0.5 / math.sqrt(mse) * mse_unc
    dp = sorted(r[3] for r in rows)
    out["max_delta_p_percent"], out["min_delta_p_percent"] = 100 * dp[-1], 100 * dp[0]
    out["median_delta_p_percent"] = 100 * median(dp)
    for name, q in (("p999", 0.999), ("p99", 0.99), ("p95", 0.95), ("p90", 0.90), ("p75", 0.75), ("p25", 0.25),
                    ("p10", 0.10), ("p5", 0.05), ("p1", 0.01), ("p01", 0.001)):
        out[f"{name}_delta_p_percent"] = 100 * percentile(dp, q)
    share = same / n
    out["top1_agreements"] = same
    out["top1_agreement_percent"] = 100 * share
    out["top1_agreement_se_percent"] = 100 * math.sqrt(share * (1 - share) / (n - 1))
    z = statistics.NormalDist().inv_cdf(CONFIDENCE)
    out["upper_bound_ln_perplexity_ratio"] = (log_ppl - log_base) + z * ratio_unc
    out["upper_bound_mean_kl_nats"] = out["mean_kl_nats"] + z * out["mean_kl_se_nats"]
    # Wilson score interval's lower end, one-sided
    centre, half = share + z * z / (2 * n), z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    out["wilson_lower_top1_percent"] = 100 * (centre - half) / (1 + z * z / n)
    return out


def plugin_statistics(arrays) -> dict[str, float]:
    import dataclasses

    import torch

    from pytest_quant.measure.stats import quality_stats, upper_bound, wilson_lower_bound

    stats = quality_stats(*(torch.cat(parts) for parts in zip(*arrays)))
    out = dataclasses.asdict(stats)
    out["upper_bound_ln_perplexity_ratio"] = upper_bound(stats.ln_perplexity_ratio, stats.ln_perplexity_ratio_se,
                                                         CONFIDENCE)
    out["upper_bound_mean_kl_nats"] = upper_bound(stats.mean_kl_nats, stats.mean_kl_se_nats, CONFIDENCE)
    out["wilson_lower_top1_percent"] = 100 * wilson_lower_bound(stats.top1_agreements, stats.tokens_scored,
                                                                CONFIDENCE)
    return out


def agree(a: float, b: float) -> bool:
    """Equal to 4 significant digits: within half a unit of the 4th digit of the larger magnitude."""
    scale = max(abs(a), abs(b))
    return scale == 0 or abs(a - b) <= 0.5 * 10 ** (math.floor(math.log10(scale)) - 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192, help="tokens of the held-out text to score (8192)")
    parser.add_argument("--context", type=int, default=512, help="window length (512)")
    parser.add_argument("--batch-windows", type=int, default=EVAL_BATCH_WINDOWS,
                        help=f"windows per forward pass ({EVAL_BATCH_WINDOWS}, the plugin's: EvalSpec.batch_windows)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (torch's default)")
    args = parser.parse_args()

    import logging

    import torch
    from transformers import AutoTokenizer

    # bnb's int8 on CPU casts fp32 inputs to fp16 and logs so on every layer call
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    text = embedded_eval_text().read_text(encoding="utf-8")
    tokens = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])[: args.tokens]
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    windows = windows_of(tokens, prefix, args.context)
    print(f"# Statistics truth: tiny model, {len(tokens)} tokens, {len(windows)} windows of {args.context}, "
          f"{args.batch_windows} windows a batch, {args.device}, torch {torch.__version__}\n")
    print(f"Windows against quality.prepare: {check_against_prepare(tokenizer, windows, args.tokens, args.context)}\n")

    start = time.perf_counter()
    reference = [logits for _, logits in scored_logits(load(args.device, None), windows, args.batch_windows)]
    print(f"Reference pass: {time.perf_counter() - start:.1f} s\n")
    failures = failures32 = 0
    for recipe in args.recipes:
        start = time.perf_counter()
        model = load(args.device, recipe)
        arrays64, arrays32, rows = [], [], []
        for (window, logits), reference_logits in zip(scored_logits(model, windows, args.batch_windows), reference):
            targets = torch.tensor(window[1])
            arrays64.append(plugin_arrays(logits, reference_logits, targets, torch.float64))
            arrays32.append(plugin_arrays(logits, reference_logits, targets, torch.float32))
            rows.extend(naive_tokens(logits, reference_logits, targets))
        del model
        ours, ours32, naive = plugin_statistics(arrays64), plugin_statistics(arrays32), naive_statistics(rows)
        print(f"## {recipe} ({time.perf_counter() - start:.1f} s)\n")
        print("| statistic | stats.py (float64 log-softmax) | independent (float64) | relative difference | "
              "4 significant digits | stats.py (float32 log-softmax, as evaluate) | relative difference | "
              "4 significant digits |")
        print("| --- | ---: | ---: | ---: | --- | ---: | ---: | --- |")
        for key, value in ours.items():
            other, value32 = naive[key], ours32[key]
            ok, ok32 = agree(float(value), float(other)), agree(float(value32), float(other))
            failures += not ok
            failures32 += not ok32
            print(f"| {key} | {value:.6g} | {other:.6g} | {relative(value, other):.1e} | {'agree' if ok else 'DIFFER'} "
                  f"| {value32:.6g} | {relative(value32, other):.1e} | {'agree' if ok32 else 'differ'} |")
        print()
    print(f"stats.py from float64 log-probabilities: {failures} statistics differ beyond 4 significant digits.  ")
    print(f"stats.py from float32 log-probabilities (evaluate's precision): {failures32} differ.")
    return 1 if failures else 0


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b)) if a != b else 0.0


if __name__ == "__main__":
    sys.exit(main())
