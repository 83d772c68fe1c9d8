"""A Hugging Face Llama-family folder to an unquantized GGUF file, written with the ``gguf`` package's writer.

llama.cpp's ``convert_hf_to_gguf.py`` is not installed by any package and recognises a BPE tokenizer only by a
hash of how it splits a fixed text, so the embedded model's own tokenizer is refused there. This converter
writes what ``convert_hf_to_gguf.py``'s ``LlamaModel`` writes for the architectures and tokenizers it accepts:
the hyperparameters, the tensors renamed by ``gguf``'s tensor-name map (Q and K rows permuted from
transformers' rotary layout to llama.cpp's), 1-D tensors in F32 and the others in the checkpoint's own dtype,
and a ``gpt2``-type tokenizer (byte-level BPE vocabulary, merges, special tokens). Anything else is a
``ConversionError`` naming what cannot be converted; nothing is guessed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONVERTER_VERSION = "1"  # part of every cached conversion's key: bump when the written file changes
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
ROPE_TYPES = ("default", None)
# The pre-tokenizers llama.cpp knows by name, as transformers' tokenizer.json spells them.
GPT2_PRE = "gpt-2"  # ByteLevel with GPT-2's own split regex
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
                r"\s+(?!\S)|\s+")
OUT_TYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}


class ConversionError(ValueError):
    """A folder this converter cannot turn into GGUF; the message names the file and what is unsupported."""


def out_type(config: dict[str, Any], requested: str | None = None) -> str:
    """The GGUF type of the converted 2-D tensors: ``requested``, else the checkpoint's own 16/32-bit dtype
    (lossless), else F16."""
    if requested is not None:
        if requested not in OUT_TYPES.values():
            raise ConversionError(f"unquantized GGUF type {requested!r} is not one of {sorted(OUT_TYPES.values())}")
        return requested
    return OUT_TYPES.get(str(config.get("dtype") or config.get("torch_dtype") or "float16"), "F16")


def check_convertible(folder: Path) -> dict[str, Any]:
    """The folder's config.json when this converter can convert it, else ConversionError saying why (reads JSON
    only: used at start-up, before any model loads)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    archs = config.get("architectures") or []
    if not any(a in ARCHITECTURES for a in archs):
        raise ConversionError(f"{folder}: architecture {archs or config.get('model_type')!r} cannot be converted to "
                              f"GGUF here (only {', '.join(ARCHITECTURES)}); give a .gguf file as --quant-model")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type")) not in ROPE_TYPES:
        raise ConversionError(f"{folder}: rope scaling {rope!r} cannot be converted here (only unscaled rope); give a "
                              ".gguf file as --quant-model")
    if not any(folder.glob("*.safetensors")):
        raise ConversionError(f"{folder}: no *.safetensors weights to convert to GGUF")
    tokenizer_vocab(folder)  # raises for a tokenizer that cannot be written as a gpt2-type vocabulary
    return config


def tokenizer_vocab(folder: Path) -> dict[str, Any]:
    """tokenizer.json as a GGUF ``gpt2`` tokenizer: tokens in id order, their types, merges, the pre-tokenizer's
    llama.cpp name, and the special token ids."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise ConversionError(f"{folder}: no tokenizer.json; only byte-level BPE tokenizers (tokenizer.json) are "
                              "converted to GGUF here")
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ConversionError(f"{path}: a {model.get('type')!r} tokenizer model; only byte-level BPE is converted here")
    pre = pre_tokenizer_name(data.get("pre_tokenizer"), path)
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    for token_id, token in added.items():
        vocab.setdefault(token["content"], token_id)
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [5] * size  # gguf.TokenType.UNUSED until named
    for text, token_id in vocab.items():
        tokens[token_id] = text
        types[token_id] = 1  # NORMAL
    for token_id, token in added.items():
        types[token_id] = 3 if token.get("special") else 4  # CONTROL, USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special = special_tokens(Path(folder), {t["content"]: i for i, t in added.items()})
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre, "special": special}


def pre_tokenizer_name(pre: Any, path: Path) -> str:
    """llama.cpp's name of a tokenizer.json pre-tokenizer, or ConversionError naming it."""
    if isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return GPT2_PRE
    parts = pre.get("pretokenizers", []) if isinstance(pre, dict) and pre.get("type") == "Sequence" else []
    if (len(parts) == 2 and parts[0].get("type") == "Split" and parts[0].get("pattern", {}).get("Regex") == LLAMA3_REGEX
            and parts[1].get("type") == "ByteLevel" and not parts[1].get("use_regex", True)):
        return "llama-bpe"
    raise ConversionError(f"{path}: pre-tokenizer {json.dumps(pre)[:200]} is not one this converter can name for "
                          "llama.cpp (byte-level GPT-2, or Llama 3's split); give a .gguf file as --quant-model")


def special_tokens(folder: Path, added: dict[str, int]) -> dict[str, Any]:
    """BOS, EOS, PAD ids (tokenizer_config.json's token strings, else config.json's ids) and add_bos/add_eos."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    tok_config_file = folder / "tokenizer_config.json"
    tok_config = json.loads(tok_config_file.read_text(encoding="utf-8")) if tok_config_file.is_file() else {}
    found: dict[str, Any] = {}
    for kind in ("bos", "eos", "pad", "unk"):
        text = tok_config.get(f"{kind}_token")
        text = text.get("content") if isinstance(text, dict) else text
        token_id = added.get(text) if isinstance(text, str) else None
        if token_id is None and isinstance(config.get(f"{kind}_token_id"), int):
            token_id = config[f"{kind}_token_id"]
        if token_id is not None:
            found[kind] = int(token_id)
    # every scored window starts with the BOS (EOS) token, as lm-eval's do: llama.cpp's perplexity adds it too
    found["add_bos"] = bool(tok_config.get("add_bos_token", True))
    found["add_eos"] = bool(tok_config.get("add_eos_token", False))
    return found


def permute(weights, n_head: int, n_head_kv: int | None = None):
    """Rows of a Q (or K) projection from transformers' rotary halves to llama.cpp's interleaved pairs
    (``convert_hf_to_gguf.py`` ``LlamaModel.permute``)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def convert(folder: Path, out_file: Path, outtype: str | None = None) -> dict[str, Any]:
    """Write ``folder`` as an unquantized GGUF to ``out_file``; what was written (type, tensors, vocabulary)."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    folder = Path(folder)
    config = check_convertible(folder)
    kind = out_type(config, outtype)
    vocab = tokenizer_vocab(folder)
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    blocks = config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, blocks)
    writer = gguf.GGUFWriter(str(out_file), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(folder.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(blocks)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    rope = config.get("rope_parameters") or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config["vocab_size"])
    file_types = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                  "BF16": gguf.LlamaFileType.MOSTLY_BF16}
    writer.add_file_type(file_types[kind])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    special = vocab["special"]
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("pad", writer.add_pad_token_id), ("unk", writer.add_unk_token_id)):
        if key in special:
            add(special[key])
    writer.add_add_bos_token(special["add_bos"])
    writer.add_add_eos_token(special["add_eos"])
    count = 0
    tied = bool(config.get("tie_word_embeddings", False))
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as tensors:
            for name in tensors.keys():
                if name.endswith(".rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
                    continue
                data = tensors.get_tensor(name).float().numpy()
                if name.endswith("q_proj.weight"):
                    data = permute(data, n_head, n_head)
                elif name.endswith("k_proj.weight"):
                    data = permute(data, n_head, n_kv)
                base, _, suffix = name.rpartition(".")
                mapped = names.get_name(base)
                if mapped is None:
                    raise ConversionError(f"{file}: tensor {name!r} has no GGUF name for the llama architecture")
                add_tensor(writer, f"{mapped}.{suffix}", data, kind if data.ndim > 1 else "F32", gguf, np)
                count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"type": kind, "tensors": count, "vocab_size": len(vocab["tokens"]), "pre_tokenizer": vocab["pre"],
            "converter_version": CONVERTER_VERSION}


def add_tensor(writer, name: str, data, kind: str, gguf, np) -> None:
    if kind == "F32":
        writer.add_tensor(name, data.astype(np.float32))
    elif kind == "F16":
        writer.add_tensor(name, data.astype(np.float16))
    else:
        raw = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.BF16)
        writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)
