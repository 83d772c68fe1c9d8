"""Train the embedded default model ("tiny") that pytest-quant ships as package data.

A small Llama-architecture causal LM and its byte-level BPE tokenizer, trained from scratch on
public-domain prose (five Jane Austen novels and the World English Bible). Persuasion is held out
for evaluation and Northanger Abbey for calibration; neither is ever trained on.

    python scripts/train_tiny.py CORPUS_DIR --out pytest_quant/models/tiny [--steps 900]

Run it on a GPU (under a minute of training on an H100); on a CPU it works but is far too slow to converge.
Everything is seeded; the provenance (corpus files and their SHA-256, split, configuration,
steps, time, device, held-out perplexity) is written to PROVENANCE.json beside the weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import random
import time
from pathlib import Path

EVAL_FILE = "austen_persuasion.txt"
CALIBRATION_FILE = "austen_northangerabbey.txt"
CALIBRATION_CHARS = 60_000  # a slice is enough for GPTQ/AWQ calibration of a model this size
VOCAB_SIZE = 8192
SPECIAL_TOKENS = ["<|endoftext|>"]

MODEL_SHAPE = dict(
    hidden_size=256,  # multiples of 128: GPTQ/AWQ group size 128 applies to every linear layer
    intermediate_size=768,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
)
TRAIN_CONTEXT = 512
# The evaluation protocol the plugin uses by default (pytest_quant.measure.quality): non-overlapping
# windows of EVAL_CONTEXT tokens, every token scored once.
EVAL_CONTEXT = 512


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def split_corpus(corpus: Path) -> tuple[list[Path], Path, Path]:
    files = sorted(corpus.glob("*.txt"))
    names = {p.name for p in files}
    for needed in (EVAL_FILE, CALIBRATION_FILE, "web_bible.txt"):
        if needed not in names:
            raise SystemExit(f"corpus {corpus} lacks {needed}; found {sorted(names)}")
    train = [p for p in files if p.name not in (EVAL_FILE, CALIBRATION_FILE)]
    return train, corpus / EVAL_FILE, corpus / CALIBRATION_FILE


def normalise(text: str) -> str:
    # The novels are hard-wrapped at ~70 columns: unwrap paragraphs so the model learns prose,
    # not line breaks. Blank lines (paragraph breaks) are kept.
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


def train_tokenizer(texts: list[str], out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token=None,
        pad_token="<|endoftext|>",
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
    )
    fast.save_pretrained(out)
    return fast


def windows_perplexity(model, ids, context: int, device: str) -> float:
    """Token-level perplexity over non-overlapping windows (the plugin's default protocol)."""
    import torch

    nll, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(ids) - 1, context):
            chunk = ids[start : start + context]
            if len(chunk) < 2:
                break
            x = torch.tensor(chunk, device=device)[None]
            logits = model(x).logits.float()
            logp = torch.log_softmax(logits[0, :-1], dim=-1)
            nll -= logp.gather(1, x[0, 1:, None]).sum().item()
            count += len(chunk) - 1
    return math.exp(nll / count)


def plugin_protocol_perplexity(folder: Path, device: str) -> dict | None:
    """The figure the plugin itself reports on the whole eval text (lm-eval rolling windows), fp32."""
    try:
        from pytest_quant.measure.quality import EvalSpec, evaluate, model_max_positions, prepare
    except ImportError:  # run from outside the repository
        return None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device)
    windows = prepare(AutoTokenizer.from_pretrained(folder), EvalSpec(text_path=folder / "eval.txt"),
                      max_positions=model_max_positions(model))
    quality, _ = evaluate(model, windows, 8)
    return {
        "protocol": "pytest_quant.measure.quality: lm-evaluation-harness rolling windows (max_length 512, every "
        "token scored once, the first conditioned on the EOS/BOS token), fp32",
        "eval_tokens": quality.tokens_scored,
        "perplexity": round(quality.perplexity, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path, help="folder of *.txt files (../shared/data/corpus)")
    ap.add_argument("--out", type=Path, default=Path("pytest_quant/models/tiny"))
    ap.add_argument("--steps", type=int, default=900, help="optimizer steps (cosine schedule ends here)")
    ap.add_argument("--batch", type=int, default=64, help="sequences of TRAIN_CONTEXT tokens per step")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    import numpy as np
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)

    train_files, eval_file, calib_file = split_corpus(args.corpus)
    train_texts = [normalise(p.read_text(encoding="utf-8")) for p in train_files]
    eval_text = normalise(eval_file.read_text(encoding="utf-8"))
    calib_text = normalise(calib_file.read_text(encoding="utf-8"))[:CALIBRATION_CHARS]
    (args.out / "eval.txt").write_text(eval_text, encoding="utf-8")
    (args.out / "calibration.txt").write_text(calib_text, encoding="utf-8")

    t0 = time.perf_counter()
    tokenizer = train_tokenizer(train_texts, args.out)
    tokenizer_s = time.perf_counter() - t0
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in train_texts:
        for para in text.split("\n\n"):
            stream.extend(tokenizer(para + "\n\n")["input_ids"])
        stream.append(eos)
    data = torch.tensor(stream, dtype=torch.long)
    eval_ids = tokenizer(eval_text)["input_ids"]
    # Early stopping watches Northanger Abbey past the calibration slice: never trained on, and
    # neither the calibration text nor the evaluation text.
    full_calib = normalise(calib_file.read_text(encoding="utf-8"))
    val_ids = tokenizer(full_calib[CALIBRATION_CHARS : CALIBRATION_CHARS + 120_000])["input_ids"]
    print(f"train tokens {len(data):,}  eval tokens {len(eval_ids):,}  tokenizer {tokenizer_s:.1f}s", flush=True)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        **MODEL_SHAPE,
    )
    model = LlamaForCausalLM(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters {n_params:,}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        fused=device.startswith("cuda"),
    )
    gen = torch.Generator().manual_seed(args.seed)
    warmup = 100
    # ~1.9M training tokens: at 64 x 512 tokens a step the model passes its best held-out loss after
    # ~10 epochs and then memorises, so the schedule is short and annealed, and the best validation
    # checkpoint is kept.
    step, start = 0, time.perf_counter()
    best_val, best_state, best_step = float("inf"), None, 0
    model.train()
    while step < args.steps:
        progress = step / args.steps
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, len(data) - TRAIN_CONTEXT - 1, (args.batch,), generator=gen)
        batch = torch.stack([data[i : i + TRAIN_CONTEXT + 1] for i in idx.tolist()]).to(device)
        with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16):
            logits = model(batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            val = windows_perplexity(model, val_ids, EVAL_CONTEXT, device)
            model.train()
            if val < best_val:
                best_val, best_step = val, step
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            print(f"step {step} loss {loss.item():.3f} val-ppl {val:.2f} lr {lr:.2e} {time.perf_counter() - start:.0f}s", flush=True)
    train_s = time.perf_counter() - start
    if best_state is not None:
        model.load_state_dict(best_state)

    model = model.float()
    ppl_fp32 = windows_perplexity(model, eval_ids, EVAL_CONTEXT, device)
    model = model.to(torch.float16)
    model.config.torch_dtype = torch.float16
    ppl_fp16 = windows_perplexity(model, eval_ids, EVAL_CONTEXT, device)
    model.save_pretrained(args.out, safe_serialization=True)
    plugin_ppl = plugin_protocol_perplexity(args.out, device)
    weights = args.out / "model.safetensors"

    provenance = {
        "what": "pytest-quant embedded default model 'tiny': Llama architecture, trained from scratch",
        "corpus": {
            "source": "../shared/data (Debian r-cran-janeaustenr 1.0.0-1, sword-text-web 426.0-1; public domain)",
            "train": {p.name: sha256(p) for p in train_files},
            "eval": {eval_file.name: sha256(eval_file)},
            "calibration": {calib_file.name: sha256(calib_file), "chars": CALIBRATION_CHARS},
            "normalisation": "paragraphs unwrapped (whitespace folded), blank-line paragraph breaks kept",
        },
        "tokenizer": {"kind": "byte-level BPE", "vocab_size": len(tokenizer), "seconds": round(tokenizer_s, 1)},
        "model": {**MODEL_SHAPE, "vocab_size": len(tokenizer), "parameters": n_params, "dtype_on_disk": "float16"},
        "training": {
            "seed": args.seed,
            "steps": step,
            "kept_step": best_step,
            "validation": "Northanger Abbey after the calibration slice (120k chars); best step kept",
            "validation_perplexity": round(best_val, 3) if best_state is not None else None,
            "batch_sequences": args.batch,
            "context_tokens": TRAIN_CONTEXT,
            "tokens_seen": step * args.batch * TRAIN_CONTEXT,
            "train_tokens": len(data),
            "lr_peak": args.lr,
            "seconds": round(train_s, 1),
            "device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "heldout_perplexity": {
            "text": "eval.txt (Persuasion, normalised)",
            "protocol": f"token level, non-overlapping windows of {EVAL_CONTEXT} tokens, all {len(eval_ids)} tokens",
            "eval_tokens": len(eval_ids),
            "fp32": round(ppl_fp32, 3),
            "fp16": round(ppl_fp16, 3),
            "plugin_protocol": plugin_ppl,
        },
        "weights_bytes": weights.stat().st_size,
    }
    (args.out / "PROVENANCE.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    print(json.dumps(provenance["heldout_perplexity"]), f"weights {weights.stat().st_size / 1e6:.1f} MB", flush=True)


if __name__ == "__main__":
    main()
