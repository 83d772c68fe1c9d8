"""Evaluation speed: the plugin's batched perplexity pass against the documented batch-1 strided loop.

Both score the same tokens from the same contexts (see bench_truth.py for how the transformers documentation's
loop is made to use lm-eval's windows) in the same process, alternating, after a warm-up of each; on CUDA every
timing is bracketed by ``torch.cuda.synchronize``. Target on an H100: the plugin >= 3x the loop's tokens/s.
Needs no lm-eval, so the plugin's own environment runs it:

    /work/venv/bin/python benchmarks/bench_eval_speed.py --device cuda
    /work/venv/bin/python benchmarks/bench_eval_speed.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

from bench_truth import QUICK_TOKENS, cut_text, default_device, hf_strided_loop, load_model  # also sets sys.path

from pytest_quant.models import TINY_DIR, embedded_eval_text

TARGET_SPEEDUP = 3.0


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    parser.add_argument("--quick", action="store_true", help=f"score about the first {QUICK_TOKENS:,} tokens")
    parser.add_argument("--max-tokens", type=int, default=None, help="score about this many tokens (default: all)")
    parser.add_argument("--context", type=int, default=512, help="window length in tokens (default: 512)")
    parser.add_argument(
        "--dtype", default=None, help="model dtype (default: the reference backend's: fp32 on CPU, the checkpoint's on GPU)"
    )
    parser.add_argument("--batch-windows", type=int, default=8, help="the plugin's batch (default: 8, its default)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each, alternating (default: 5)")
    parser.add_argument("--model", type=Path, default=TINY_DIR, help="local model folder (default: embedded tiny)")
    parser.add_argument("--text", type=Path, default=embedded_eval_text(), help="text file (default: embedded eval)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")

    import torch

    from pytest_quant.backends import default_dtype
    from pytest_quant.measure.quality import EvalSpec, evaluate, model_max_positions, prepare

    device = args.device or default_device()
    dtype = args.dtype or str(default_dtype(args.model, device)).removeprefix("torch.")
    max_tokens = args.max_tokens if args.max_tokens is not None else (QUICK_TOKENS if args.quick else None)
    model, tokenizer = load_model(args.model, device, dtype)
    text = cut_text(args.text.read_text(encoding="utf-8"), tokenizer, max_tokens)
    with tempfile.TemporaryDirectory() as scratch:
        text_path = Path(scratch) / "text.txt"
        text_path.write_text(text, encoding="utf-8")
        windows = prepare(
            tokenizer,
            EvalSpec(text_path, context_tokens=args.context, batch_windows=args.batch_windows),
            max_positions=model_max_positions(model),
        )

    # Warm-up: kernels, allocator and (on CUDA) the context, on the first windows of each method.
    head = windows.windows[: args.batch_windows]
    warm = dataclasses.replace(windows, windows=head, tokens_scored=sum(w.n_scored for w in head))
    evaluate(model, warm, batch_windows=args.batch_windows)
    hf_strided_loop(model, tokenizer, cut_text(text, tokenizer, 2 * args.context), args.context, device)

    plugin_runs, loop_runs = [], []
    plugin_peak = loop_peak = None
    for _ in range(args.repeats):
        reset_peak(device)
        measurement, _, _ = evaluate(model, windows, batch_windows=args.batch_windows)
        plugin_peak = peak_mib(device)
        plugin_runs.append(measurement)
        reset_peak(device)
        loop_runs.append(hf_strided_loop(model, tokenizer, text, args.context, device))
        loop_peak = peak_mib(device)

    plugin_rates = [m.tokens_scored / m.seconds for m in plugin_runs]
    loop_rates = [r["tokens"] / r["seconds"] for r in loop_runs]
    plugin_ppl, loop_ppl = plugin_runs[-1].perplexity, loop_runs[-1]["perplexity"]
    speedup = statistics.median(plugin_rates) / statistics.median(loop_rates)
    tolerance = 5e-5 if dtype == "float32" else 2e-3  # 16-bit matmuls differ between batch shapes
    agree = abs(plugin_ppl - loop_ppl) / loop_ppl <= tolerance
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"

    print(f"device {device} [{name}]  dtype {dtype}  torch {torch.__version__}")
    print(
        f"{windows.tokens_scored} tokens, {len(windows.windows)} windows of {windows.context_tokens}; "
        f"{args.repeats} timed runs each"
    )
    print()
    print(f"{'method':<44} {'tokens/s (median)':>18} {'min':>10} {'max':>10} {'perplexity':>12} {'peak MiB':>9}")
    for label, rates, ppl, peak in (
        (f"pytest-quant evaluate (batch {args.batch_windows})", plugin_rates, plugin_ppl, plugin_peak),
        ("transformers doc strided loop (batch 1)", loop_rates, loop_ppl, loop_peak),
    ):
        peak_text = f"{peak:>9.0f}" if peak is not None else f"{'-':>9}"
        print(
            f"{label:<44} {statistics.median(rates):>18,.0f} {min(rates):>10,.0f} {max(rates):>10,.0f} "
            f"{ppl:>12.6f} {peak_text}"
        )
    print()
    if device.startswith("cuda"):
        verdict = "met" if speedup >= TARGET_SPEEDUP else "NOT met"
        print(f"speed-up {speedup:.2f}x (target >= {TARGET_SPEEDUP:.0f}x on an H100: {verdict} on {name})")
    else:
        print(f"speed-up {speedup:.2f}x (the >= {TARGET_SPEEDUP:.0f}x target is for an H100; on a CPU this is informational)")
    print(f"perplexities agree within {tolerance:g} relative: {agree}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
