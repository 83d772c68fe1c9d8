"""The llama_cpp backend's recipe fields and their checks, light: nothing of llama.cpp is imported here.

``type`` is any quantization type llama.cpp's quantizer accepts (``tools/quantize/quantize.cpp``
``QUANT_OPTIONS`` of the llama.cpp that llama-cpp-python 0.3.36 vendors, with its ``llama_ftype`` values);
``source_type`` the unquantized GGUF it is quantized from (default: the checkpoint's own dtype);
``imatrix`` an importance-matrix file made by llama.cpp's ``llama-imatrix`` (GGUF or legacy ``.dat``);
``threads`` the fixed number of CPU threads every evaluation and timed decode runs with (recorded in the
decode mode, so figures at another count are never compared); ``n_gpu_layers`` layers offloaded on CUDA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..models.gguf_header import QUANT_TYPES
from ..recipes import Recipe
from .base import refuse_unknown_fields

REQUIRES: tuple[str, ...] = ("llama_cpp", "gguf")
INSTALL_HINT = "pip install 'pytest-quant[gguf]' (builds llama.cpp from source: minutes; CUDA: see the README)"
FIELDS = frozenset({"type", "source_type", "imatrix", "threads", "n_gpu_layers"})
DEFAULT_THREADS = 2  # fixed, not the machine's core count: decode figures of one count are comparable
SOURCE_TYPES = ("F32", "F16", "BF16")
MODE_PREFIX = "llama.cpp"  # decode_mode of a llama.cpp timing: "llama.cpp-t2" (2 threads)
# a --quant-model that is an already quantized GGUF file: gated as it is, with no reference
GGUF_PREQUANTIZED = Recipe("gguf-prequantized", "llama_cpp", (), "a GGUF file that is already quantized, run by "
                           "llama.cpp as it is", compared_with="gguf-prequantized")

# llama.cpp refuses these without an importance matrix (llama-quant.cpp: "requires an importance matrix")
# (llama-quant.cpp tensor_requires_imatrix: the types whose default tensor type is one of those it lists)
NEED_IMATRIX = frozenset({"IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M", "IQ3_XXS", "Q2_K_S"})


def canonical_type(value: Any) -> str:
    """A quantization type as QUANT_OPTIONS spells it (llama.cpp compares names case-insensitively), or
    ValueError listing the accepted ones."""
    name = str(value).upper() if isinstance(value, str) else None
    if name not in QUANT_TYPES:
        raise ValueError(f"llama_cpp: type = {value!r} is not a type llama.cpp's quantizer accepts; accepted: "
                         f"{', '.join(QUANT_TYPES)}")
    return name


def validate(settings: dict[str, Any]) -> None:
    refuse_unknown_fields("llama_cpp", settings, FIELDS)
    kind = canonical_type(settings["type"]) if "type" in settings else None
    source = settings.get("source_type")
    if source is not None and (not isinstance(source, str) or source.upper() not in SOURCE_TYPES):
        raise ValueError(f"llama_cpp: source_type = {source!r} is not one of {', '.join(SOURCE_TYPES)}")
    imatrix = settings.get("imatrix")
    if imatrix is not None:
        if kind is None:
            raise ValueError(f"llama_cpp: imatrix = {imatrix!r} without a type: an importance matrix guides quantizing")
        if not isinstance(imatrix, str) or not Path(imatrix).expanduser().is_file():
            raise ValueError(f"llama_cpp: imatrix = {imatrix!r} is not a file (make one with llama.cpp's llama-imatrix)")
    elif kind in NEED_IMATRIX:
        raise ValueError(f"llama_cpp: type = {kind!r} needs an importance matrix (llama.cpp refuses it without one): "
                         "set imatrix = \"path/to/imatrix.gguf\"")
    threads = settings.get("threads", DEFAULT_THREADS)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"llama_cpp: threads = {threads!r} must be a positive integer")
    layers = settings.get("n_gpu_layers", -1)
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < -1:
        raise ValueError(f"llama_cpp: n_gpu_layers = {layers!r} must be an integer >= -1 (-1: every layer)")


def unavailable_reason(recipe: Recipe, model_path: Path) -> str | None:
    """Why ``recipe`` cannot run on ``model_path`` (None: it can): a Hugging Face recipe on a GGUF file, a GGUF
    recipe on a folder the converter cannot convert (its reason)."""
    from ..models import is_gguf_file

    gguf_file = is_gguf_file(model_path)
    if recipe.backend != "llama_cpp":
        return (f"recipe {recipe.name} needs a Hugging Face model folder; {model_path} is a GGUF file: only the gguf-* "
                "recipes run on it") if gguf_file else None
    if gguf_file:
        return None
    from .gguf_convert import ConversionError, check_convertible

    try:
        check_convertible(model_path)
    except (ConversionError, OSError, ValueError) as exc:
        return f"recipe {recipe.name}: {exc}"
    return None


def decode_mode(threads: int) -> str:
    """How a llama.cpp decode was timed, as the report and the baselines record it."""
    return f"{MODE_PREFIX}-t{threads}"
