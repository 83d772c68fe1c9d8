"""What a GGUF file's header says (architecture, file type, context length, tokenizer), read without the ``gguf``
package or llama.cpp: start-up checks a ``--quant-model`` that is a ``.gguf`` file before anything loads."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
# llama.cpp's quantization types by name -> llama_ftype, as tools/quantize/quantize.cpp's QUANT_OPTIONS lists them
# (aliases included; COPY is not a quantization)
QUANT_TYPES: dict[str, int] = {
    "Q1_0": 40, "Q2_0": 41, "Q4_0": 2, "Q4_1": 3, "MXFP4_MOE": 38, "Q5_0": 8, "Q5_1": 9, "IQ2_XXS": 19, "IQ2_XS": 20,
    "IQ2_S": 28, "IQ2_M": 29, "IQ1_S": 24, "IQ1_M": 31, "TQ1_0": 36, "TQ2_0": 37, "Q2_K": 10, "Q2_K_S": 21,
    "IQ3_XXS": 23, "IQ3_S": 26, "IQ3_M": 27, "Q3_K": 12, "IQ3_XS": 22, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13,
    "IQ4_NL": 25, "IQ4_XS": 30, "Q4_K": 15, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K": 17, "Q5_K_S": 16, "Q5_K_M": 17,
    "Q6_K": 18, "Q8_0": 7, "F16": 1, "BF16": 32, "F32": 0,
}
FILE_TYPE_NAMES = {value: name for name, value in QUANT_TYPES.items() if name not in ("Q3_K", "Q4_K", "Q5_K")}
# general.file_type values (llama_ftype) of the unquantized files a GGUF recipe quantizes from
UNQUANTIZED = {0: "F32", 1: "F16", 32: "BF16"}


@dataclass(frozen=True)
class GgufHeader:
    version: int
    tensor_count: int
    metadata: dict[str, Any]  # every scalar and string; arrays as their length

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def file_type(self) -> int | None:
        return self.metadata.get("general.file_type")

    @property
    def file_type_name(self) -> str:
        return FILE_TYPE_NAMES.get(self.file_type, f"file type {self.file_type}")

    @property
    def unquantized(self) -> bool:
        return self.file_type in UNQUANTIZED

    @property
    def context_length(self) -> int | None:
        return self.metadata.get(f"{self.architecture}.context_length")


def _read(f: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("the file ends inside its header")
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    length = _read(f, "<Q")
    if length > 1 << 24:
        raise ValueError(f"a header string of {length} bytes")
    return f.read(length).decode("utf-8", errors="replace")


def _value(f: BinaryIO, kind: int):
    if kind in _SCALARS:
        return _read(f, _SCALARS[kind])
    if kind == STRING:
        return _string(f)
    if kind == ARRAY:
        item, count = _read(f, "<I"), _read(f, "<Q")
        for _ in range(count):
            _value(f, item)
        return count
    raise ValueError(f"unknown metadata value type {kind}")


def read_header(path: Path) -> GgufHeader:
    """The header of a GGUF file, or ValueError naming the file and what is wrong."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if f.read(4) != MAGIC:
                raise ValueError("it does not start with the GGUF magic bytes")
            version, tensors, count = _read(f, "<I"), _read(f, "<Q"), _read(f, "<Q")
            metadata = {}
            for _ in range(count):
                key = _string(f)
                metadata[key] = _value(f, _read(f, "<I"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable GGUF file ({exc})") from None
    return GgufHeader(version, tensors, metadata)
