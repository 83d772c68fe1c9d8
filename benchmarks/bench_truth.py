"""Perplexity truth: the plugin's perplexity equals two independent computations on the same windows.

1. pytest-quant: ``pytest_quant.measure.quality.prepare`` + ``evaluate`` (batched, stride == context).
2. The strided loop the transformers documentation gives ("Perplexity of fixed-length models": ``for begin_loc
   in range(0, seq_len, stride)``, labels -100 on the overlap, ``model(input_ids, labels=target_ids).loss``).
3. lm-evaluation-harness: ``HFLM(pretrained=<local folder>).loglikelihood_rolling`` on the same text.

lm-eval runs in an environment of its own, so that the plugin's stays lean. Setup, once (a local PyPI mirror
serves these; nothing else is fetched):

    python3 -m venv /work/venv-bench
    /work/venv-bench/bin/pip install "torch==2.14.1" "transformers==5.23.0" "lm-eval==0.4.13" accelerate

Run from the repository root (the script puts the repository on sys.path; no install of pytest-quant needed):

    /work/venv-bench/bin/python benchmarks/bench_truth.py --device cpu --quick

How the three are made to score the same tokens from the same contexts (C = --context, default 512):

* lm-eval scores every token of the text once. Its first window is [prefix] + tokens[:C-1], where the prefix
  is the tokenizer's BOS (else EOS); each later window is a full C-token input whose C logits predict the next
  C tokens, so that window's last logit predicts the first token of the following window. The plugin uses
  exactly these windows.
* The documented loop, run as printed with max_length = stride = C on the bare text, never scores the first
  token of the text nor the first token of any later window (its labels lie inside the window, and the loss
  shifts them by one). Run instead on [prefix] + tokens with max_length = C + 1 and stride = C, it scores every
  token once, each from the same context lm-eval gives it: the extra (C+1)-th input is only the label the
  window's last logit predicts, and causal attention leaves the other logits unchanged.
* Where the text is not a multiple of C long, the documented loop's last window starts at the last stride
  step, so its first scored tokens see only a few tokens of context; lm-eval's (and the plugin's) last window
  is a full-length input ending at the text's end. The loop here scores that last window both ways, compares
  lm-eval's, and prints what the documented one gives.
* The documented loop weights each window's mean loss by ``num_valid_tokens - batch_size``. That is the number
  of labels the loss averaged only when a window's first label is not masked; with stride < max_length (here,
  every window after the first) the loss averaged ``num_valid_tokens`` labels. The loop here weights by the
  labels actually scored, and also prints what the documented count gives.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pytest_quant.models import TINY_DIR, embedded_eval_text  # noqa: E402

QUICK_TOKENS = 20_000
INSTALL_HINT = """\
lm-evaluation-harness is not importable from {python}.
Set up the benchmark's own environment and run the script with it:

    python3 -m venv /work/venv-bench
    /work/venv-bench/bin/pip install "torch==2.14.1" "transformers==5.23.0" "lm-eval==0.4.13" accelerate
    /work/venv-bench/bin/python benchmarks/bench_truth.py --device cpu --quick
"""


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def load_model(model_dir: Path, device: str, dtype_name: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype_name)).to(device).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def cut_text(text: str, tokenizer, max_tokens: int | None) -> str:
    """The longest run of whole paragraphs of ``text`` that tokenizes to at most ``max_tokens`` tokens.

    Cutting the string (not the token list) lets lm-eval, which takes a string, see the same tokens.
    """
    if max_tokens is None:
        return text
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    if len(encoding["input_ids"]) <= max_tokens:
        return text
    char_end = encoding["offset_mapping"][max_tokens - 1][1]
    cut = text.rfind("\n\n", 0, char_end)
    return text[: cut if cut > 0 else char_end]


def plugin_perplexity(model, tokenizer, text_path: Path, context: int, batch_windows: int) -> dict:
    from pytest_quant.measure.quality import EvalSpec, evaluate, model_max_positions, prepare

    spec = EvalSpec(text_path, context_tokens=context, batch_windows=batch_windows)
    windows = prepare(tokenizer, spec, max_positions=model_max_positions(model))
    measurement, _, _ = evaluate(model, windows, batch_windows=batch_windows)
    return {
        "perplexity": measurement.perplexity,
        "tokens": measurement.tokens_scored,
        "windows": measurement.windows,
        "seconds": measurement.seconds,
        "prefix": windows.prefix_token,
        "token_ids": [t for w in windows.windows for t in w.target_ids],
    }


def hf_strided_loop(model, tokenizer, text: str, context: int, device: str) -> dict:
    """The transformers documentation's loop, batch 1, on [prefix] + text with max_length = C + 1, stride = C.

    Its last window starts at the last stride step, so it may be short and give its first scored tokens little
    context; lm-eval's last window is full-length instead. Both variants of the last window are scored:
    ``perplexity`` uses lm-eval's (the comparison), ``as_printed_perplexity`` the documentation's.
    """
    import torch

    encodings = tokenizer(text, return_tensors="pt", verbose=False)  # as in the documentation
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    sequence = torch.cat([torch.tensor([[prefix]]), encodings.input_ids], dim=1)
    max_length, stride = context + 1, context
    seq_len = sequence.size(1)

    def window_nll(begin_loc: int, end_loc: int, trg_len: int) -> tuple[float, int, int]:
        input_ids = sequence[:, begin_loc:end_loc].to(device)
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            neg_log_likelihood = model(input_ids, labels=target_ids).loss.item()
        scored = (target_ids[:, 1:] != -100).sum().item()  # the labels the shifted loss averaged
        doc_count = (target_ids != -100).sum().item() - target_ids.size(0)  # the documentation's count
        return neg_log_likelihood, scored, doc_count

    totals = {"nll": 0.0, "tokens": 0, "doc_nll": 0.0, "doc_tokens": 0}
    last_full = None
    windows = 0
    prev_end_loc = 0
    synchronize(device)
    start = time.perf_counter()
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc  # may be different from stride on last loop
        nll, scored, doc_count = window_nll(begin_loc, end_loc, trg_len)
        windows += 1
        if end_loc == seq_len and end_loc - begin_loc < max_length and seq_len >= max_length:
            # lm-eval's last window: the same labels, from a full-length input ending at the text's end
            last_full = window_nll(seq_len - max_length, seq_len, trg_len)
            last_short = (nll, scored)
        else:
            totals["nll"] += nll * scored
            totals["tokens"] += scored
        totals["doc_nll"] += nll * doc_count
        totals["doc_tokens"] += doc_count

        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    synchronize(device)
    seconds = time.perf_counter() - start
    nll_sum, n_tokens = totals["nll"], totals["tokens"]
    as_printed = (nll_sum + last_short[0] * last_short[1]) / (n_tokens + last_short[1]) if last_full else nll_sum / n_tokens
    if last_full:
        nll_sum += last_full[0] * last_full[1]
        n_tokens += last_full[1]
    return {
        "perplexity": math.exp(nll_sum / n_tokens),
        "tokens": n_tokens,
        "windows": windows,
        "seconds": seconds,
        "as_printed_perplexity": math.exp(as_printed),
        "short_last_window_tokens": last_short[1] if last_full else 0,
        "doc_count_perplexity": math.exp(totals["doc_nll"] / totals["doc_tokens"]),
        "doc_count_tokens": totals["doc_tokens"],
        "token_ids": sequence[0, 1:].tolist(),
    }


def lm_eval_perplexity(model_dir: Path, text: str, context: int, device: str, dtype_name: str, batch_size: int) -> dict:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(
        pretrained=str(model_dir),
        backend="causal",
        device=device,
        dtype=dtype_name,
        batch_size=batch_size,
        max_length=context,
        # The text's own tokens, no BOS added by the tokenizer: the prefix token is the BOS (tiny's tokenizer
        # adds none anyway; for one that does, lm-eval's default would score a second BOS as a text token).
        add_bos_token=False,
    )
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    start = time.perf_counter()
    (loglikelihood,) = lm.loglikelihood_rolling([request], disable_tqdm=True)
    seconds = time.perf_counter() - start
    tokens = lm.tok_encode(text)
    return {
        "perplexity": math.exp(-loglikelihood / len(tokens)),
        "tokens": len(tokens),
        "seconds": seconds,
        "prefix": lm.prefix_token_id,
        "max_length": lm.max_length,
        "token_ids": tokens,
        "version": _lm_eval_version(),
    }


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def significant(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    parser.add_argument("--quick", action="store_true", help=f"score about the first {QUICK_TOKENS:,} tokens")
    parser.add_argument("--max-tokens", type=int, default=None, help="score about this many tokens (whole paragraphs)")
    parser.add_argument("--context", type=int, default=512, help="window length C in tokens (default: 512)")
    parser.add_argument("--dtype", default="float32", help="model dtype for all three (default: float32)")
    parser.add_argument("--batch-windows", type=int, default=8, help="plugin and lm-eval batch (default: 8)")
    parser.add_argument("--model", type=Path, default=TINY_DIR, help="local model folder (default: embedded tiny)")
    parser.add_argument("--text", type=Path, default=embedded_eval_text(), help="text file (default: embedded eval)")
    args = parser.parse_args(argv)

    try:
        import lm_eval  # noqa: F401
    except ImportError:
        print(INSTALL_HINT.format(python=sys.executable), file=sys.stderr)
        return 2

    import torch
    import transformers

    device = args.device or default_device()
    max_tokens = args.max_tokens if args.max_tokens is not None else (QUICK_TOKENS if args.quick else None)
    started = time.perf_counter()
    model, tokenizer = load_model(args.model, device, args.dtype)
    text = cut_text(args.text.read_text(encoding="utf-8"), tokenizer, max_tokens)

    with tempfile.TemporaryDirectory() as scratch:
        text_path = Path(scratch) / "text.txt"
        text_path.write_text(text, encoding="utf-8")
        plugin = plugin_perplexity(model, tokenizer, text_path, args.context, args.batch_windows)
    hf = hf_strided_loop(model, tokenizer, text, args.context, device)
    del model
    lm = lm_eval_perplexity(args.model, text, args.context, device, args.dtype, args.batch_windows)
    total = time.perf_counter() - started

    same_tokens = plugin["token_ids"] == hf["token_ids"] == lm["token_ids"]
    same_prefix = plugin["prefix"] == lm["prefix"]
    print(f"model {args.model}  text {args.text.name} ({len(text):,} characters)  device {device}  dtype {args.dtype}")
    print(f"torch {torch.__version__}  transformers {transformers.__version__}  lm-eval {lm['version']}")
    print(f"context C = {args.context}, stride = C; prefix token {plugin['prefix']} (BOS, else EOS)")
    print(f"same token ids in all three: {same_tokens}; lm-eval prefix token {lm['prefix']}, max_length {lm['max_length']}")
    print()
    print(f"{'computation':<58} {'perplexity':>12} {'tokens':>8} {'windows':>8} {'seconds':>8}")
    rows = [
        ("pytest-quant evaluate (batched)", plugin, plugin["windows"]),
        ("transformers doc strided loop ([prefix]+text, C+1, C)", hf, hf["windows"]),
        ("lm-eval HFLM.loglikelihood_rolling", lm, math.ceil(lm["tokens"] / args.context)),
    ]
    for name, row, windows in rows:
        print(f"{name:<58} {row['perplexity']:>12.6f} {row['tokens']:>8} {windows:>8} {row['seconds']:>8.1f}")
    print()
    if hf["short_last_window_tokens"]:
        print(
            f"the documented loop's own short last window (its {hf['short_last_window_tokens']} scored tokens "
            f"conditioned on 1..{hf['short_last_window_tokens']} tokens instead of a full window) would give "
            f"{hf['as_printed_perplexity']:.6f}"
        )
    print(
        f"the documented loop's own token weights (num_valid - batch_size, one short for every window after the "
        f"first; short last window) would give {hf['doc_count_perplexity']:.6f} over {hf['doc_count_tokens']} tokens"
    )
    values = [plugin["perplexity"], hf["perplexity"], lm["perplexity"]]
    spread = (max(values) - min(values)) / min(values)
    agree = spread <= 5e-5  # half a unit in the 4th significant digit: equal to 4 significant digits
    counts_agree = plugin["tokens"] == hf["tokens"] == lm["tokens"]
    print(
        f"equal to 4 significant digits: {agree} ({', '.join(significant(v) for v in values)}; "
        f"largest relative difference {spread:.1e}, target <= 5e-5); token counts equal: {counts_agree}"
    )
    print(f"total {total:.1f} s")
    return 0 if agree and same_tokens and same_prefix and counts_agree else 1


if __name__ == "__main__":
    sys.exit(main())
