"""A GGUF file's header read without gguf or llama.cpp, and a .gguf file (or a folder holding only one) as
--quant-model: checked before anything loads."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pytest_quant.models import context_length, is_gguf_file, resolve_model
from pytest_quant.models.gguf_header import read_header


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def write_gguf(path: Path, file_type: int = 15, arch: str = "llama", context: int = 2048) -> Path:
    """A header-only GGUF file, written by hand (the layout of the GGUF spec, version 3)."""
    kv = [(_string("general.architecture"), struct.pack("<I", 8) + _string(arch)),
          (_string("general.file_type"), struct.pack("<I", 4) + struct.pack("<I", file_type)),
          (_string(f"{arch}.context_length"), struct.pack("<I", 4) + struct.pack("<I", context)),
          (_string("tokenizer.ggml.tokens"), struct.pack("<I", 9) + struct.pack("<IQ", 8, 2) + _string("a") + _string("b"))]
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)) + b"".join(k + v for k, v in kv))
    return path


def test_the_header_says_architecture_type_and_context(tmp_path: Path):
    header = read_header(write_gguf(tmp_path / "m.gguf"))
    assert (header.version, header.architecture, header.file_type, header.context_length) == (3, "llama", 15, 2048)
    assert header.file_type_name == "Q4_K_M" and not header.unquantized
    assert header.metadata["tokenizer.ggml.tokens"] == 2  # an array: its length
    assert read_header(write_gguf(tmp_path / "f.gguf", file_type=1)).unquantized


@pytest.mark.parametrize("content, words", [(b"GGML....", "GGUF magic"), (b"GGUF\x03\x00", "ends inside its header")])
def test_a_file_that_is_not_gguf_is_an_error_naming_it(tmp_path: Path, content: bytes, words: str):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path}: not a readable GGUF file .*{words}"):
        read_header(path)


def test_a_gguf_file_is_a_model(tmp_path: Path):
    path = write_gguf(tmp_path / "My-Model.Q4_K_M.gguf")
    model = resolve_model(str(path))
    assert model.path == path.resolve() and model.name == "my-model.q4_k_m" and is_gguf_file(model.path)
    assert context_length(model.path) == 2048


def test_a_folder_whose_only_weights_are_one_gguf_file_is_that_file(tmp_path: Path):
    folder = tmp_path / "m"
    folder.mkdir()
    path = write_gguf(folder / "model.gguf")
    (folder / "config.json").write_text("{}")
    assert resolve_model(str(folder)).path == path.resolve()
    write_gguf(folder / "other.gguf")
    with pytest.raises(ValueError, match="holds only GGUF weights, several of them .*give the one to gate as "
                                         f"--quant-model={folder}/model.gguf"):
        resolve_model(str(folder))


def test_a_broken_gguf_file_is_a_usage_error_naming_it(tmp_path: Path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not gguf")
    with pytest.raises(ValueError, match=f"--quant-model '{path}': {path}: not a readable GGUF file"):
        resolve_model(str(path))
