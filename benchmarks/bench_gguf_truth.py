"""GGUF truth: the plugin's perplexity and KL statistics of GGUF quants against llama.cpp's own
``llama-perplexity --kl-divergence``, over the same tokens.

Both sides read the same files: the embedded model converted to F16 GGUF by ``pytest_quant.backends.gguf_convert``
and quantized by llama.cpp's ``llama_model_quantize`` (``pytest_quant.backends.llama_cpp.quantize``). Then:

1. llama.cpp: the ``llama-perplexity`` binary built from the sources llama-cpp-python's sdist vendors (a separate
   build with CMake, not the Python bindings), run first on the F16 file with ``--kl-divergence-base`` (it stores the
   base's log-probabilities, 16 bits each, and prints its perplexity), then on each quant with ``--kl-divergence``.
   Its chunks: ``--chunks N`` chunks of ``-c 512`` tokens of the text tokenized with BOS, each chunk's first token
   replaced by BOS, the second half of each chunk scored (255 tokens a chunk).
2. the plugin: the same chunks as ``RollingWindow`` s (input = chunk[:511], targets = chunk[257:512]), tokenized by
   the plugin's llama.cpp tokenizer, scored through ``LlamaCppCausalLM`` (llama-cpp-python), the reference kept by
   ``measure.quality.evaluate`` (top-510 compact form, the plugin's default, and ``exact``), and every figure
   from ``measure.stats.quality_stats``.

It prints each figure side by side and the relative difference; "equal" is equal to 4 significant digits or
within the last digit llama-perplexity prints (it prints KL with 6 decimals). It exits non-zero when PPL(Q), the
figure llama.cpp computes from the float logits of the file under test alone, is not equal for every file (the
F16 one included: that is the base's perplexity). The figures that involve the base are computed by llama.cpp from
its stored 16-bit, clipped log-probabilities; the F16 file against its own stored self shows that storage's error.

    .venv/bin/python benchmarks/bench_gguf_truth.py --llama-perplexity /tmp/ppl-build/bin/llama-perplexity \\
        --chunks 16 --types Q8_0,Q4_K_M,Q4_0
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pytest_quant.models import TINY_DIR, embedded_eval_text  # noqa: E402

N_CTX = 512
# llama-perplexity's summary line -> the plugin's QualityStats field, and the factor from the field to the printed unit
FIGURES = {
    "Mean PPL(Q)": ("perplexity", 1.0), "Mean PPL(base)": ("reference_perplexity", 1.0),
    "Cor(ln(PPL(Q)), ln(PPL(base)))": ("ln_perplexity_correlation", 100.0),
    "Mean ln(PPL(Q)/PPL(base))": ("ln_perplexity_ratio", 1.0), "Mean PPL(Q)/PPL(base)": ("perplexity_ratio", 1.0),
    "Mean PPL(Q)-PPL(base)": ("perplexity_difference", 1.0), "Mean    KLD": ("mean_kl_nats", 1.0),
    "Maximum KLD": ("max_kl_nats", 1.0), "99.9%   KLD": ("p999_kl_nats", 1.0), "99.0%   KLD": ("p99_kl_nats", 1.0),
    "95.0%   KLD": ("p95_kl_nats", 1.0), "Median  KLD": ("median_kl_nats", 1.0), "Minimum KLD": ("min_kl_nats", 1.0),
    "Mean    Δp": ("mean_delta_p_percent", 1.0), "RMS Δp    ": ("rms_delta_p_percent", 1.0),
    "Same top p": ("top1_agreement_percent", 1.0),
}
# Figures llama.cpp computes from the float logits of the file under test alone. The others read the base's
# log-probabilities as llama-perplexity stores them (16 bits a token, clipped 16 nats below the top one): their
# differences are that storage's, measured by the F16 file against its own stored self (the first block).
GATED = ("Mean PPL(Q)",)


def run_llama_perplexity(binary: Path, model: Path, text: Path, chunks: int, base: Path, threads: int,
                         kl: bool) -> tuple[str, float]:
    # -fa off: llama-cpp-python's default, as the plugin runs llama.cpp (llama.cpp's tools default to auto, which
    # turns flash attention on on this CPU and moved PPL(Q) by 3e-4 relative on the embedded model)
    args = [str(binary), "-m", str(model), "-c", str(N_CTX), "-b", str(N_CTX), "-t", str(threads), "-fa", "off",
            "--kl-divergence-base", str(base)]
    args += ["--kl-divergence"] if kl else ["-f", str(text), "--chunks", str(chunks)]
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr, time.perf_counter() - start


def parse(output: str) -> dict[str, tuple[float, str]]:
    """Each summary figure: its value and its printed text (the text says the precision printed)."""
    found = {}
    for label in FIGURES:
        match = re.search(re.escape(label) + r"\s*:\s*(-?[0-9.]+)", output)
        if match:
            found[label] = (float(match.group(1)), match.group(1))
    return found


def equal(plugin: float, printed: str) -> tuple[bool, float]:
    ours, theirs = float(plugin), float(printed)
    rel = abs(ours - theirs) / max(abs(theirs), 1e-300)
    decimals = len(printed.partition(".")[2])
    resolution = 0.5 * 10 ** -decimals
    return (f"{ours:.4g}" == f"{theirs:.4g}" or rel <= 5e-5 or abs(ours - theirs) <= resolution), rel


def plugin_windows(tokenizer, text: str, chunks: int):
    from pytest_quant.measure.quality import EvalWindows, RollingWindow

    tokens = tokenizer.encode(text, add_special_tokens=True)  # as llama-perplexity: BOS first
    windows = []
    first = N_CTX // 2
    for i in range(chunks):
        chunk = list(tokens[i * N_CTX:(i + 1) * N_CTX])
        chunk[0] = tokenizer.bos_token_id
        windows.append(RollingWindow(tuple(chunk[:N_CTX - 1]), tuple(chunk[first + 1:])))
    scored = sum(w.n_scored for w in windows)
    return EvalWindows(tuple(windows), scored, N_CTX, N_CTX, tokenizer.bos_token_id, str(embedded_eval_text()))


def plugin_stats(model, windows, kept):
    from pytest_quant.measure.quality import evaluate
    from pytest_quant.measure.stats import quality_stats

    _, _, scores = evaluate(model, windows, 8, reference=kept)
    return quality_stats(scores.logprob_target, scores.reference_logprob_target, scores.kl_nats, scores.top1_match)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llama-perplexity", type=Path, required=True)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--types", default="Q8_0,Q4_K_M,Q4_0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="folder for the GGUF files (default: a temporary one)")
    args = parser.parse_args()

    from pytest_quant.backends.gguf_convert import convert
    from pytest_quant.backends.llama_cpp import quantize
    from pytest_quant.backends.llama_cpp_model import LlamaCppCausalLM

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-gguf-"))
    work.mkdir(parents=True, exist_ok=True)
    f16 = work / "tiny-F16.gguf"
    convert(TINY_DIR, f16)
    text = embedded_eval_text()
    base = work / "base.kld"
    _, seconds = run_llama_perplexity(args.llama_perplexity, f16, text, args.chunks, base, args.threads, kl=False)
    print(f"llama-perplexity F16 base written in {seconds:.1f} s")
    reference = LlamaCppCausalLM(f16, args.threads)
    windows = plugin_windows(reference.tokenizer, text.read_text(encoding="utf-8"), args.chunks)
    print(f"{windows.tokens_scored} scored tokens in {len(windows.windows)} chunks of {N_CTX}")
    from pytest_quant.measure.quality import evaluate

    kept = {k: evaluate(reference, windows, 8, keep_reference_top_k=k)[1] for k in (510, "exact")}
    failures = []
    for kind in ["F16", *args.types.split(",")]:
        quant = work / f"tiny-{kind}.gguf"
        if kind != "F16":
            quantize(f16, quant, kind, None, args.threads)
        for _attempt in range(3):  # its log is written by a thread that now and then loses the last lines at exit
            out, seconds = run_llama_perplexity(args.llama_perplexity, quant, text, args.chunks, base, args.threads,
                                                kl=True)
            theirs = parse(out)
            if "Mean PPL(Q)" in theirs:
                break
        if "Mean PPL(Q)" not in theirs:
            failures.append(f"{kind}: llama-perplexity printed no summary (its log ends early):\n{out[-1500:]}")
            continue
        model = LlamaCppCausalLM(quant, args.threads)
        ours = {k: plugin_stats(model, windows, kept[k]) for k in (510, "exact")}
        model.close()
        print(f"\n{kind} (llama-perplexity {seconds:.1f} s)")
        print(f"  {'figure':32} {'llama-perplexity':>17} {'plugin k=510':>14} {'plugin exact':>14}  rel (exact)  equal")
        for label, (field, factor) in FIGURES.items():
            if label not in theirs:
                continue
            value, printed = theirs[label]
            mine = {k: factor * getattr(s, field) for k, s in ours.items()}
            same, rel = equal(mine["exact"], printed)
            same_k, _ = equal(mine[510], printed)
            print(f"  {label.strip():32} {printed:>17} {mine[510]:14.6f} {mine['exact']:14.6f}  {rel:10.2e}  "
                  f"{'yes' if same else 'NO'}{'' if same_k else ' (k=510: no)'}")
            if label in GATED and not same:
                failures.append(f"{kind} {label.strip()}: llama-perplexity {printed}, plugin {mine['exact']:.6g}")
        print(f"  mean KL ± SE (plugin, exact): {ours['exact'].mean_kl_nats:.6g} ± {ours['exact'].mean_kl_se_nats:.2g}")
    reference.close()
    if failures:
        print("\nNOT EQUAL:\n  " + "\n  ".join(failures))
        return 1
    print("\nevery gated figure equal to 4 significant digits (or to the digits llama-perplexity prints)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
