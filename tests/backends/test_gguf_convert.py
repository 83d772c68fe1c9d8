"""The Hugging Face -> GGUF converter: what it accepts and refuses (read from JSON, before any model loads), the
Q/K row permutation, and the file it writes (read back by the plugin's own header reader and gguf's reader)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pytest_quant.backends.gguf_convert import (ConversionError, check_convertible, out_type, permute,
                                                pre_tokenizer_name, tokenizer_vocab)
from pytest_quant.models import TINY_DIR


def copy_tiny(tmp_path: Path, **config_changes) -> Path:
    folder = tmp_path / "m"
    shutil.copytree(TINY_DIR, folder)
    if config_changes:
        config = json.loads((folder / "config.json").read_text())
        config.update(config_changes)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_the_embedded_model_is_convertible_with_its_own_tokenizer():
    config = check_convertible(TINY_DIR)
    vocab = tokenizer_vocab(TINY_DIR)
    assert config["vocab_size"] == len(vocab["tokens"]) == 8192
    assert vocab["pre"] == "gpt-2"
    assert vocab["types"][0] == 3 and vocab["tokens"][0] == "<|endoftext|>"  # the one special token: CONTROL
    assert set(vocab["types"][1:]) == {1}
    tokenizer = json.loads((TINY_DIR / "tokenizer.json").read_text())
    assert vocab["merges"][0] == " ".join(tokenizer["model"]["merges"][0])
    assert len(vocab["merges"]) == len(tokenizer["model"]["merges"])
    assert vocab["special"] == {"bos": 0, "eos": 0, "pad": 0, "add_bos": True, "add_eos": False}


@pytest.mark.parametrize("changes, words", [
    ({"architectures": ["Qwen2ForCausalLM"]}, ["Qwen2ForCausalLM", "cannot be converted", ".gguf file"]),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, ["rope scaling", "llama3"]),
])
def test_a_folder_it_cannot_convert_is_an_error_naming_why(tmp_path: Path, changes, words):
    folder = copy_tiny(tmp_path, **changes)
    with pytest.raises(ConversionError) as error:
        check_convertible(folder)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_a_tokenizer_it_cannot_name_for_llama_cpp_is_refused(tmp_path: Path):
    folder = copy_tiny(tmp_path)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁"}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ConversionError, match="pre-tokenizer .*Metaspace.* is not one this converter can name"):
        check_convertible(folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ConversionError, match="no tokenizer.json"):
        check_convertible(folder)


def test_llama3s_split_is_named_llama_bpe():
    from pytest_quant.backends.gguf_convert import LLAMA3_REGEX

    pre = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    assert pre_tokenizer_name(pre, Path("tokenizer.json")) == "llama-bpe"


def test_the_unquantized_type_is_the_checkpoints_dtype_unless_asked():
    assert out_type({"dtype": "float16"}) == "F16"
    assert out_type({"torch_dtype": "bfloat16"}) == "BF16"
    assert out_type({"dtype": "float32"}) == "F32"
    assert out_type({"dtype": "float16"}, "F32") == "F32"
    with pytest.raises(ConversionError, match="'Q4_0' is not one of"):
        out_type({}, "Q4_0")


def test_q_and_k_rows_go_from_rotary_halves_to_interleaved_pairs():
    import numpy as np

    heads, head_dim, width = 2, 8, 3
    weights = np.arange(heads * head_dim * width, dtype=np.float32).reshape(heads * head_dim, width)
    out = permute(weights, heads)
    for head in range(heads):
        for i in range(head_dim // 2):  # transformers rotates row i with row i + d/2; llama.cpp 2i with 2i + 1
            assert (out[head * head_dim + 2 * i] == weights[head * head_dim + i]).all()
            assert (out[head * head_dim + 2 * i + 1] == weights[head * head_dim + i + head_dim // 2]).all()
    kv = permute(weights[:head_dim], heads, 1)  # K of one KV head (grouped-query attention)
    assert (kv[1] == weights[head_dim // 2]).all()


def test_the_written_file_holds_the_model(tmp_path: Path):
    gguf = pytest.importorskip("gguf")
    import numpy as np
    from safetensors.numpy import load_file

    from pytest_quant.backends.gguf_convert import convert
    from pytest_quant.models.gguf_header import read_header

    out = tmp_path / "tiny.gguf"
    written = convert(TINY_DIR, out)
    header = read_header(out)
    assert (written["type"], written["tensors"], header.tensor_count) == ("F16", 56, 56)  # tied: no output.weight
    assert header.architecture == "llama" and header.file_type == 1 and header.context_length == 1024
    meta = header.metadata
    assert (meta["llama.block_count"], meta["llama.embedding_length"], meta["llama.attention.head_count"]) == (6, 256, 4)
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"], meta["tokenizer.ggml.tokens"]) == ("gpt2", "gpt-2", 8192)
    tensors = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    hf = load_file(str(TINY_DIR / "model.safetensors"))
    assert np.array_equal(np.asarray(tensors["token_embd.weight"].data), hf["model.embed_tokens.weight"])
    assert np.array_equal(np.asarray(tensors["blk.0.attn_q.weight"].data), permute(hf["model.layers.0.self_attn.q_proj.weight"], 4))
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"


def test_a_bf16_conversion_stores_bfloat16_bits(tmp_path: Path):
    gguf = pytest.importorskip("gguf")
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from pytest_quant.backends.gguf_convert import convert
    from pytest_quant.models.gguf_header import read_header

    out = tmp_path / "tiny-bf16.gguf"
    assert convert(TINY_DIR, out, "BF16")["type"] == "BF16"
    assert read_header(out).file_type == 32
    embedding = next(t for t in gguf.GGUFReader(str(out)).tensors if t.name == "token_embd.weight")
    assert embedding.tensor_type.name == "BF16"
    expected = load_file(str(TINY_DIR / "model.safetensors"))["model.embed_tokens.weight"].to(torch.bfloat16)
    stored = np.asarray(embedding.data).view(np.uint16).reshape(8192, 256)
    assert np.array_equal(stored, expected.view(torch.int16).numpy().view(np.uint16))
