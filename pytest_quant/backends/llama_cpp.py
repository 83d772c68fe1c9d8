"""GGUF through llama.cpp (llama-cpp-python): convert once, quantize with llama.cpp's own quantizer, run in llama.cpp.

The unquantized GGUF is the ``--quant-model`` file itself, or the model folder converted by ``gguf_convert``
(cached under ``<cache dir>/gguf/<key>``, keyed by the weights' and tokenizer files' content, the converter's
version, the ``gguf`` package's and the source type). A recipe with a ``type`` quantizes it with
``llama_model_quantize`` (cached under ``<cache dir>/llama_cpp/<key>``, keyed by the unquantized file's key, the
type, the importance matrix's content and llama-cpp-python's version); the recipe ``gguf-reference`` runs the
unquantized file itself, and is the reference every GGUF recipe is compared with, as llama.cpp's
``perplexity --kl-divergence`` compares a quant with its F16 base.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import Loaded
from .llama_cpp_spec import DEFAULT_THREADS, QUANT_TYPES, canonical_type, validate

CONVERT_SUBDIR = "gguf"
QUANTIZE_SUBDIR = "llama_cpp"
UNQUANTIZED_FILE = "model.gguf"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def load(request) -> Loaded:
    from ..hardware import device_kind
    from .llama_cpp_model import LlamaCppCausalLM

    settings = dict(request.recipe.options)
    validate(settings)
    threads = int(settings.get("threads", DEFAULT_THREADS))
    layers = 0
    if device_kind(request.device) == "cuda":
        import llama_cpp

        if not llama_cpp.llama_supports_gpu_offload():
            raise ValueError("llama_cpp: this llama-cpp-python was built without GPU offload; rebuild it with "
                             "CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install --force-reinstall --no-binary llama-cpp-python "
                             "llama-cpp-python (see the README)")
        layers = int(settings.get("n_gpu_layers", -1))
    notes: dict[str, Any] = {}
    source, source_key, convert_status, convert_s = unquantized(request.model_path, settings.get("source_type"),
                                                                request.cache_dir)
    notes.update(unquantized_gguf=str(source), conversion=convert_status, convert_seconds=convert_s)
    path, status, quantize_s = source, convert_status, 0.0
    if "type" in settings:
        path, status, quantize_s = quantized(source, source_key, canonical_type(settings["type"]), settings.get("imatrix"),
                                             threads, request.cache_dir)
    request.before_load()
    model = LlamaCppCausalLM(path, threads, layers)
    notes.update(gguf=str(path), file_bytes=model.get_memory_footprint(), buffers=model.buffers, threads=threads)
    kernel = f"llama.cpp {model.file_type}, {model.tokenizer.pytest_quant_family} tokenizer, {buffers_text(model.buffers)}"
    return Loaded(model, model.tokenizer, model.file_type, kernel=kernel, quantize_seconds=quantize_s + convert_s,
                  cache=status, notes=notes)


def buffers_text(buffers: dict[str, int]) -> str:
    """llama.cpp's own buffers as the kernel column shows them: "buffers model 4.7 + KV 6.0 + compute 17.5 MiB"."""
    parts = [f"{kind} {size / (1 << 20):.1f}" for kind, size in buffers.items()]
    return f"buffers {' + '.join(parts)} MiB" if parts else "buffers not reported"


def _root(cache_dir: Path | None, subdir: str) -> Path:
    if cache_dir is None:
        import tempfile

        return Path(tempfile.mkdtemp(prefix=f"pytest-quant-{subdir}-"))
    return Path(cache_dir) / subdir


def _sha256(path: Path) -> str:
    from ..qcache import file_sha256

    return file_sha256(Path(path))


def unquantized(model_path: Path, source_type: str | None, cache_dir: Path | None) -> tuple[Path, str, str, float]:
    """The unquantized GGUF of ``model_path``: (file, its key, cache status, seconds converting)."""
    from importlib.metadata import version

    from .. import qcache
    from ..models.gguf_header import read_header
    from .gguf_convert import CONVERTER_VERSION, convert, out_type

    model_path = Path(model_path)
    if model_path.is_file():
        header = read_header(model_path)
        if source_type is not None and header.file_type_name != source_type.upper():
            raise ValueError(f"llama_cpp: source_type = {source_type!r}, but {model_path} is {header.file_type_name}")
        return model_path, _sha256(model_path), "", 0.0
    from ..models import read_config

    kind = out_type(read_config(model_path), source_type.upper() if source_type else None)
    root = _root(cache_dir, CONVERT_SUBDIR)
    inputs = {"backend": "gguf-convert", "model": qcache.model_fingerprint(model_path, memo_dir=root),
              "tokenizer": {n: _sha256(model_path / n) for n in TOKENIZER_FILES if (model_path / n).is_file()},
              "type": kind, "converter": CONVERTER_VERSION, "versions": {"gguf": version("gguf")}}
    key = qcache.cache_key(inputs)

    def make(staged: Path) -> dict[str, Any]:
        start = time.perf_counter()
        written = convert(model_path, staged / UNQUANTIZED_FILE, kind)
        return {**written, "convert_seconds": time.perf_counter() - start}

    built = qcache.build(root, key, inputs, make)
    seconds = float(built.info.get("convert_seconds", 0.0)) if built.status != "hit" else 0.0
    return built.path / UNQUANTIZED_FILE, key, built.status, seconds


def quantized(source: Path, source_key: str, kind: str, imatrix: str | None, threads: int,
              cache_dir: Path | None) -> tuple[Path, str, float]:
    """``source`` quantized to ``kind`` by llama.cpp's quantizer: (file, cache status, seconds quantizing)."""
    from importlib.metadata import version

    from .. import qcache

    name = f"model-{kind}.gguf"
    root = _root(cache_dir, QUANTIZE_SUBDIR)
    inputs = {"backend": "llama_cpp", "source": source_key, "type": kind,
              "imatrix": _sha256(Path(imatrix).expanduser()) if imatrix else None,
              "versions": {"llama_cpp_python": version("llama_cpp_python")}}
    key = qcache.cache_key(inputs)

    def make(staged: Path) -> dict[str, Any]:
        start = time.perf_counter()
        quantize(source, staged / name, kind, imatrix, threads)
        return {"quantize_seconds": time.perf_counter() - start}

    built = qcache.build(root, key, inputs, make)
    seconds = float(built.info.get("quantize_seconds", 0.0)) if built.status != "hit" else 0.0
    return built.path / name, built.status, seconds


def quantize(source: Path, out_file: Path, kind: str, imatrix: str | None, threads: int) -> None:
    """``llama_model_quantize`` of ``source`` to ``kind`` (with an importance matrix's data when given)."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[kind]
    params.nthread = threads
    keep = None
    if imatrix:
        keep = imatrix_entries(Path(imatrix).expanduser())
        params.imatrix = ctypes.cast(keep[0], ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(out_file).encode(), ctypes.byref(params))
    del keep
    if code != 0 or not Path(out_file).is_file():
        raise RuntimeError(f"llama_cpp: llama_model_quantize({source.name} -> {kind}) failed with code {code}; llama.cpp's "
                           "log above says why (a tensor that needs an importance matrix: set imatrix in the recipe)")


def imatrix_entries(path: Path):
    """A GGUF importance matrix (``llama-imatrix``'s default output) as the array ``llama_model_quantize`` reads:
    per tensor the mean squared activations (``in_sum2`` / ``counts``), ended by a null name. Returns the array
    and the buffers it points into (kept alive by the caller while quantizing)."""
    import ctypes

    import gguf
    import llama_cpp
    import numpy as np

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise ValueError(f"llama_cpp: imatrix {path} is not a GGUF importance matrix ({exc}); make one with "
                         "llama-imatrix (its default GGUF output)") from None
    tensors = {t.name: np.asarray(t.data, dtype=np.float32) for t in reader.tensors}
    names = sorted(n[: -len(".in_sum2")] for n in tensors if n.endswith(".in_sum2"))
    if not names:
        raise ValueError(f"llama_cpp: imatrix {path} holds no '<tensor>.in_sum2' entries: not a llama-imatrix file")
    buffers, entries = [], (llama_cpp.llama_model_imatrix_data * (len(names) + 1))()
    for i, name in enumerate(names):
        sums = tensors[f"{name}.in_sum2"].reshape(-1)
        counts = tensors.get(f"{name}.counts", np.ones(1, np.float32)).reshape(-1)
        rows = sums.reshape(len(counts), -1)
        values = np.where(counts[:, None] > 0, rows / np.maximum(counts[:, None], 1e-30), 1.0).astype(np.float32).reshape(-1)
        values = np.ascontiguousarray(values)
        encoded = ctypes.create_string_buffer(name.encode())
        buffers += [values, encoded]
        entries[i].name = ctypes.cast(encoded, ctypes.c_char_p)
        entries[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = values.size
    entries[len(names)].name = None
    return entries, buffers
