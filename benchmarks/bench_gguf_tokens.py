"""GGUF tokenization: how far llama.cpp's token ids (the converted GGUF's tokenizer, what the plugin scores a GGUF
recipe with) differ from the Hugging Face tokenizer's (what it scores every other recipe with), on the eval text
and the calibration text.

Per text: the token counts, how many aligned positions differ and where the first difference is, over the whole
text in one call (as the eval windows are made) and line by line (each line tokenized alone: the boundaries a
whole-text tokenization never shows). The model folder defaults to the embedded model; any folder the converter
accepts works.

    .venv/bin/python benchmarks/bench_gguf_tokens.py [--model PATH] [--text FILE ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pytest_quant.models import TINY_DIR, embedded_calibration_text, embedded_eval_text  # noqa: E402


def compare(a: list[int], b: list[int]) -> tuple[int, int | None]:
    """(aligned positions that differ plus the length difference, the first differing position)."""
    differing = sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if first is None and len(a) != len(b):
        first = min(len(a), len(b))
    return differing, first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=TINY_DIR)
    parser.add_argument("--text", type=Path, action="append")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from pytest_quant.backends.gguf_convert import convert
    from pytest_quant.backends.llama_cpp_model import LlamaCppCausalLM

    gguf = Path(tempfile.mkdtemp(prefix="bench-gguf-tokens-")) / "model.gguf"
    convert(args.model, gguf)
    llama = LlamaCppCausalLM(gguf, 2).tokenizer
    hf = AutoTokenizer.from_pretrained(args.model)
    for text_path in args.text or [embedded_eval_text(), embedded_calibration_text()]:
        text = Path(text_path).read_text(encoding="utf-8")
        ours = llama.encode(text)
        theirs = list(hf(text, add_special_tokens=False, verbose=False)["input_ids"])
        differing, first = compare(ours, theirs)
        lines = [line for line in text.splitlines() if line.strip()]
        line_diffs = sum(llama.encode(line) != list(hf(line, add_special_tokens=False)["input_ids"]) for line in lines)
        print(f"{Path(text_path).name}: llama.cpp {len(ours)} tokens, transformers {len(theirs)}; {differing} ids differ "
              f"({100.0 * differing / max(len(theirs), 1):.4f}%), first at {first}; lines tokenized alone: "
              f"{line_diffs} of {len(lines)} differ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
