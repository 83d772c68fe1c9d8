"""ONNX Runtime dynamic int8 on CPU: export with a KV cache, ``quantize_dynamic``, run in an InferenceSession.

The causal LM is exported by ``torch.onnx.export(dynamo=True)`` (onnxscript) through a wrapper whose inputs
are ``input_ids``, ``attention_mask``, ``position_ids`` and one ``past_key_i``/``past_value_i`` pair per
layer and whose outputs are ``logits`` and the ``present_*`` pairs; a prefill feeds a past of length 0.
optimum-onnx is not used: its only release (0.1.0) pins transformers < 5 and optimum 2.1.

The exported and quantized files are cached under ``request.cache_dir/onnxruntime/<key>`` through
``pytest_quant.qcache`` (built in a staging folder, renamed into place, re-hashed on every lookup); the key
covers the model's files, the recipe and the versions of torch, transformers, onnx, onnxscript and
onnxruntime. ``OrtCausalLM`` duck-types what the plugin's measurements call on a transformers model.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from . import Loaded, load_tokenizer
from .base import CausalLMOutput, RuntimeCausalLM, cpu_settings, refuse_unknown_fields

REQUIRES: tuple[str, ...] = ("onnxruntime", "onnx", "onnxscript")
INSTALL_HINT = "pip install 'pytest-quant[onnx]'"
DEVICES = ("cpu",)
CALLS_BEFORE_LOAD = True
FIELDS = frozenset({"weight_type", "per_channel", "reduce_range", "opset", "intra_op_threads"})
WEIGHT_TYPES = ("QInt8", "QUInt8")
DEFAULTS: dict[str, Any] = {"weight_type": "QInt8", "per_channel": False, "reduce_range": False, "opset": 18}
CACHE_SUBDIR = "onnxruntime"
MODEL_FILE = "model.onnx"
EXTERNAL_DATA_BYTES = 1 << 30  # above this the fp32 export no longer fits one protobuf comfortably


def validate(settings: dict[str, Any]) -> None:
    refuse_unknown_fields("onnxruntime", settings, FIELDS)
    weight_type = settings.get("weight_type", DEFAULTS["weight_type"])
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"onnxruntime: weight_type = {weight_type!r} is not one of {list(WEIGHT_TYPES)}")
    for flag in ("per_channel", "reduce_range"):
        if flag in settings and not isinstance(settings[flag], bool):
            raise ValueError(f"onnxruntime: {flag} = {settings[flag]!r} must be true or false")
    opset = settings.get("opset", DEFAULTS["opset"])
    if not isinstance(opset, int) or not 17 <= opset <= 23:
        raise ValueError(f"onnxruntime: opset = {opset!r} must be an integer from 17 to 23")
    threads = settings.get("intra_op_threads")
    if threads is not None and (not isinstance(threads, int) or threads < 0):
        raise ValueError(f"onnxruntime: intra_op_threads = {threads!r} must be a non-negative integer (0: ORT's default)")


def load(request) -> Loaded:
    from .. import qcache

    settings = cpu_settings(request, "onnxruntime", "CPUExecutionProvider", DEFAULTS, validate)
    trust = bool(getattr(request, "trust_remote_code", False))
    notes: dict[str, Any] = {}
    cache, seconds = "", 0.0
    if request.cache_dir is None:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="pytest-quant-onnx-"))
        seconds = export_and_quantize(request.model_path, settings, folder, trust)
    else:
        root = Path(request.cache_dir) / CACHE_SUBDIR
        inputs = cache_inputs(request.model_path, settings, root)
        key = qcache.cache_key(inputs)
        built = qcache.build(root, key, inputs,
                             lambda staged: {"quantize_seconds": export_and_quantize(request.model_path, settings, staged,
                                                                                     trust)})
        folder, cache = built.path, built.status
        seconds = float(built.info.get("quantize_seconds", 0.0)) if built.status != "hit" else 0.0
        if built.status == "hit":
            notes["quantize_seconds_when_cached"] = built.info.get("quantize_seconds")
        if built.problem:
            notes["cache_problem"] = built.problem
        notes["cache_key"] = key
    notes["onnx_dir"] = str(folder)
    request.before_load()
    model = OrtCausalLM(folder, request.model_path, settings.get("intra_op_threads") or 0, trust_remote_code=trust)
    notes["footprint_bytes"] = model.get_memory_footprint()
    notes["session_rss_bytes"] = model.session_rss_bytes
    kernel = "onnxruntime:" + ",".join(model.quantized_ops) if model.quantized_ops else "onnxruntime"
    return Loaded(model, load_tokenizer(request.model_path, trust_remote_code=trust), "float32", kernel=kernel,
                  quantize_seconds=seconds, cache=cache, notes=notes)


def cache_inputs(model_path: Path, settings: dict[str, Any], root: Path) -> dict[str, Any]:
    from importlib.metadata import version

    from .. import qcache

    return {
        "backend": "onnxruntime",
        "model": qcache.model_fingerprint(model_path, memo_dir=root),
        "recipe": {k: settings[k] for k in sorted(settings) if k != "intra_op_threads"},
        "versions": {name: version(name) for name in ("torch", "transformers", "onnx", "onnxscript", "onnxruntime")},
    }


# -- export and quantization ---------------------------------------------------------------------------

def export_and_quantize(model_path: Path, settings: dict[str, Any], out_dir: Path, trust_remote_code: bool = False) -> float:
    """Export the fp32 model with a KV cache, quantize it dynamically into ``out_dir/model.onnx``; seconds."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ..atomic import TMP_SUFFIX, writer_prefix

    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # named after this process, so that a later run removes it if this one is killed (atomic.remove_stale_temps)
    with tempfile.TemporaryDirectory(prefix=writer_prefix("export"), suffix=TMP_SUFFIX, dir=out_dir.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        large = export(model_path, fp32, settings["opset"], trust_remote_code)
        quantize_dynamic(fp32, out_dir / MODEL_FILE, weight_type=getattr(QuantType, settings["weight_type"]),
                         per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                         use_external_data_format=large)
    return time.perf_counter() - start


def export(model_path: Path, out_file: Path, opset: int, trust_remote_code: bool = False) -> bool:
    """Export ``model_path`` to ``out_file``; True when its weights went to an external data file."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="eager",
                                                 trust_remote_code=trust_remote_code)
    model.eval()
    config = model.config
    layers = config.num_hidden_layers
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    batch, seq, past_len = 2, 5, 3  # example sizes: none 0 or 1, which torch.export would specialise
    input_ids = torch.randint(0, config.vocab_size, (batch, seq))
    mask = torch.ones(batch, past_len + seq, dtype=torch.long)
    positions = torch.arange(past_len, past_len + seq)[None].expand(batch, seq)
    past = tuple(torch.zeros(batch, heads, past_len, head_dim) for _ in range(2 * layers))
    b, s, p, t = (torch.export.Dim(n) for n in ("batch", "seq", "past", "total"))
    large = sum(x.numel() * x.element_size() for x in model.parameters()) > EXTERNAL_DATA_BYTES
    with torch.no_grad():
        torch.onnx.export(
            _flat_cache_class()(model, layers), (input_ids, mask, positions, *past), str(out_file),
            input_names=["input_ids", "attention_mask", "position_ids", *_cache_names("past", layers)],
            output_names=["logits", *_cache_names("present", layers)],
            dynamic_shapes=({0: b, 1: s}, {0: b, 1: t}, {0: b, 1: s}, tuple({0: b, 2: p} for _ in past)),
            opset_version=opset, dynamo=True, external_data=large)
    del model
    return large


def _cache_names(prefix: str, layers: int) -> list[str]:
    return [f"{prefix}_{kv}_{i}" for i in range(layers) for kv in ("key", "value")]


def _flat_cache_class():
    import torch

    class FlatCache(torch.nn.Module):
        """The model with its KV cache as flat tensors, as an ONNX graph takes it."""

        def __init__(self, model, layers: int):
            super().__init__()
            self.model, self.layers = model, layers

        def forward(self, input_ids, attention_mask, position_ids, *past):
            from transformers import DynamicCache

            cache = DynamicCache()
            for i in range(self.layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=True)
            return (out.logits, *(t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)))

    return FlatCache


# -- the session, shaped like a transformers model -----------------------------------------------------

class OrtCache:
    """The KV cache between ORT calls: one numpy array per ``past_*`` input."""

    def __init__(self, arrays: list):
        self.arrays = arrays

    def get_seq_length(self) -> int:
        return int(self.arrays[0].shape[2]) if self.arrays else 0


class OrtCausalLM(RuntimeCausalLM):
    """An ``InferenceSession`` called the way the plugin calls a transformers causal LM.

    ``model(input_ids=..., use_cache=False, logits_to_keep=n).logits`` and ``model(ids,
    past_key_values=cache, use_cache=True)`` (``.logits``, ``.past_key_values``) on CPU torch tensors;
    ``device``, ``config``, ``generation_config``, ``dtype``, ``eval()``, ``parameters()`` (one empty CPU tensor) and
    ``get_memory_footprint()`` (bytes of the quantized ONNX files).
    """

    def __init__(self, folder: Path, model_path: Path, intra_op_threads: int = 0, trust_remote_code: bool = False):
        import onnxruntime as ort
        from transformers import AutoConfig, GenerationConfig

        super().__init__()
        self.folder = Path(folder)
        self.config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        try:  # read for its eos_token_id by the greedy generation measurement
            self.generation_config = GenerationConfig.from_pretrained(model_path)  # JSON only: runs no code
        except OSError:
            self.generation_config = GenerationConfig.from_model_config(self.config)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        rss_before = _rss_bytes()
        self.session = ort.InferenceSession(str(self.folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        self.session_rss_bytes = max(0, _rss_bytes() - rss_before)
        names = [i.name for i in self.session.get_inputs()]
        self.past_names = [n for n in names if n.startswith("past_")]
        first = next(i for i in self.session.get_inputs() if i.name.startswith("past_"))
        self.heads, self.head_dim = int(first.shape[1]), int(first.shape[3])
        self.quantized_ops = _quantized_op_types(self.folder / MODEL_FILE)

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file() and not p.name.endswith(".json"))

    def forward(self, input_ids=None, past_key_values=None, use_cache=True, logits_to_keep=0, attention_mask=None,
                **unused):
        import numpy as np
        import torch

        ids = input_ids.detach().cpu().numpy().astype(np.int64)
        batch, seq = ids.shape
        if past_key_values is None:
            past = [np.zeros((batch, self.heads, 0, self.head_dim), np.float32) for _ in self.past_names]
        else:
            past = past_key_values.arrays
        past_len = int(past[0].shape[2])
        if attention_mask is None:
            mask = np.ones((batch, past_len + seq), np.int64)
        else:
            mask = attention_mask.detach().cpu().numpy().astype(np.int64)
        positions = np.broadcast_to(np.arange(past_len, past_len + seq, dtype=np.int64), (batch, seq))
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": np.ascontiguousarray(positions)}
        feed.update(zip(self.past_names, past))
        outputs = self.session.run(None, feed)
        logits = outputs[0]
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return CausalLMOutput(torch.from_numpy(np.ascontiguousarray(logits)), OrtCache(outputs[1:]) if use_cache else None)


def _quantized_op_types(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    wanted = ("MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear", "MatMulIntegerToFloat", "QLinearMatMul")
    return sorted({node.op_type for node in graph.node if node.op_type in wanted})


def _rss_bytes() -> int:
    """This process's resident memory (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
