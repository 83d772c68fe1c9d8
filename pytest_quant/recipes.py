"""Named, frozen, validated quantization recipes: the built-ins and users' own from pyproject.toml.

A user recipe lives under ``[tool.pytest-quant.recipes.NAME]``: a ``backend`` and the fields of the
matching transformers quantization config (``BitsAndBytesConfig``, ``GPTQConfig``, ``AwqConfig``),
plus the plugin's own fields (calibration text, kernel). Unknown names or fields are a usage error
that lists the known ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
DECODE_MODES = ("compiled", "cuda-graph", "eager")  # measure.throughput.CHAIN, fastest first
PLUGIN_FIELDS = ("decode_mode", "decode_mode_reason", "kv_cache")  # fields of every recipe, whatever its backend


class RecipeError(ValueError):
    """A recipe that cannot be used as written; the message names the bad value."""


@dataclass(frozen=True)
class Recipe:
    name: str
    backend: str
    settings: tuple[tuple[str, Any], ...] = ()
    description: str = ""
    builtin: bool = True
    devices: frozenset[str] | None = None  # device kinds this recipe runs on, where narrower than its backend's
    default: bool = True  # chosen when --quant-recipes names none (False: slow or niche, named on purpose)
    # the fastest decode mode this recipe is timed in (None: the session's --quant-decode-mode); a recipe whose
    # compile takes minutes pins "cuda-graph", with the reason recorded in decode_mode_reason
    decode_mode: str | None = None
    decode_mode_reason: str = ""
    # the recipe this one is compared with (KL, ratios, Δ perplexity); a GGUF recipe's is the unquantized GGUF run
    # by llama.cpp (gguf-reference), as llama.cpp's perplexity --kl-divergence compares a quant with its F16 base
    compared_with: str = "reference"
    serves_as_reference: bool = False  # the reference of the recipes whose compared_with names it
    kv_cache: str | None = None  # a quantized KV cache (measure.kv_cache.FORMATS), with any weight recipe

    def __post_init__(self) -> None:
        if self.decode_mode is not None and self.decode_mode not in DECODE_MODES:
            raise RecipeError(f"recipe {self.name}: decode_mode = {self.decode_mode!r} is not one of "
                              f"{', '.join(DECODE_MODES)}")
        if self.kv_cache is not None:
            from .measure.kv_cache import EAGER_REASON, parse

            try:
                parse(self.kv_cache)
            except ValueError as exc:
                raise RecipeError(f"recipe {self.name}: {exc}") from None
            if self.decode_mode not in (None, "eager"):
                raise RecipeError(f"recipe {self.name}: decode_mode = {self.decode_mode!r} with kv_cache = "
                                  f"{self.kv_cache!r}: {EAGER_REASON}; leave decode_mode out or set it to 'eager'")
            if self.decode_mode is None:
                object.__setattr__(self, "decode_mode", "eager")
                object.__setattr__(self, "decode_mode_reason", EAGER_REASON)

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.settings).get(key, default)

    @property
    def options(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.settings}

    @property
    def is_reference(self) -> bool:
        return (self.backend == "reference" and self.kv_cache is None) or self.serves_as_reference


def _frozen(settings: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in settings.items()))


def _builtin(name: str, backend: str, description: str, devices: tuple[str, ...] | None = None, default: bool = True,
             decode_mode: str | None = None, decode_mode_reason: str = "", compared_with: str = "reference",
             serves_as_reference: bool = False, kv_cache: str | None = None, **settings: Any) -> Recipe:
    return Recipe(name, backend, _frozen(settings), description, devices=frozenset(devices) if devices else None,
                  default=default, decode_mode=decode_mode, decode_mode_reason=decode_mode_reason,
                  compared_with=compared_with, serves_as_reference=serves_as_reference, kv_cache=kv_cache)


def _kv_recipes() -> tuple[Recipe, ...]:
    """The reference and bnb-nf4, each with every quantized KV cache format."""
    from .measure.kv_cache import FORMATS

    return tuple(_builtin(f"{base}-kv-{kv}", backend, f"{what} with a {FORMATS[kv].description} KV cache", kv_cache=kv,
                          **settings) for kv in FORMATS for base, backend, what, settings in (
        ("reference", "reference", "unquantized weights", {}),
        ("bnb-nf4", "bitsandbytes", "bitsandbytes nf4 weights", {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"})))


GGUF_REFERENCE = "gguf-reference"
# llama.cpp's own quantizer on the unquantized GGUF (the checkpoint's dtype), run by llama.cpp (backend llama_cpp)
GGUF_TYPES = (("Q8_0", "8-bit round to nearest, blocks of 32"), ("Q6_K", "6-bit k-quant"),
              ("Q5_K_M", "5-bit k-quant mix"), ("Q4_K_M", "4-bit k-quant mix"),
              ("Q4_0", "4-bit round to nearest, blocks of 32"), ("IQ4_XS", "4.25 bpw non-linear i-quant"))


def _gguf_recipes() -> tuple[Recipe, ...]:
    reference = _builtin(GGUF_REFERENCE, "llama_cpp", "the unquantized GGUF (the checkpoint's dtype) run by llama.cpp: the "
                         "reference of every gguf-* recipe (the Hugging Face reference's figures beside it)",
                         serves_as_reference=True)
    return (reference, *(_builtin(f"gguf-{kind.lower()}", "llama_cpp", f"GGUF {kind} ({what}), llama.cpp's quantizer "
                                  "and runtime", compared_with=GGUF_REFERENCE, type=kind) for kind, what in GGUF_TYPES))


BUILTIN_RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        _builtin("reference", "reference", "unquantized: fp16/bf16 on GPU, fp32 on CPU"),
        _builtin("bnb-nf4", "bitsandbytes", "bitsandbytes 4-bit NormalFloat", load_in_4bit=True, bnb_4bit_quant_type="nf4"),
        _builtin("bnb-fp4", "bitsandbytes", "bitsandbytes 4-bit float", load_in_4bit=True, bnb_4bit_quant_type="fp4"),
        _builtin(
            "bnb-nf4-dq",
            "bitsandbytes",
            "bitsandbytes 4-bit NormalFloat with double quantization of the scales",
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
        ),
        _builtin(
            "bnb-int8",
            "bitsandbytes",
            "bitsandbytes LLM.int8 (outliers above the threshold kept in 16 bits)",
            load_in_8bit=True,
            llm_int8_threshold=6.0,
        ),
        _builtin("gptq-w4g128", "gptqmodel", "GPTQ 4-bit, group size 128 (GPTQModel)", method="gptq", bits=4, group_size=128),
        _builtin("gptq-w8g128", "gptqmodel", "GPTQ 8-bit, group size 128 (GPTQModel)", method="gptq", bits=8, group_size=128),
        _builtin(
            "awq-w4g128",
            "gptqmodel",
            "AWQ 4-bit, group size 128, zero point, GEMM (GPTQModel)",
            method="awq",
            bits=4,
            group_size=128,
            zero_point=True,
            version="gemm",
        ),
        _builtin("torch-dynamic-int8", "torch_dynamic", "PyTorch dynamic int8: torch.ao.quantization.quantize_dynamic of "
                 "nn.Linear to qint8 (deprecated by torch; its successor is torchao-dynamic-int8)", api="torch.ao"),
        _builtin("torchao-dynamic-int8", "torch_dynamic", "PyTorch dynamic int8 through torchao's quantize_ "
                 "(Int8DynamicActivationInt8WeightConfig): quantize_dynamic's successor", api="torchao"),
        _builtin("torchao-int8wo", "torchao", "torchao int8 weight-only, per channel (transformers TorchAoConfig)",
                 quant_type="int8_weight_only"),
        _builtin("torchao-int8dq", "torchao", "torchao int8 dynamic activation + int8 weight",
                 quant_type="int8_dynamic_activation_int8_weight"),
        _builtin("torchao-int4wo-g128", "torchao", "torchao int4 weight-only, group size 128 (CUDA; torchao 0.18's "
                 "default int4 layout needs the mslk library: named on purpose)", devices=("cuda",), default=False,
                 quant_type="int4_weight_only", group_size=128),
        _builtin("torchao-fp8", "torchao", "torchao float8 dynamic activation + float8 weight (CUDA, compute "
                 "capability 8.9+)", devices=("cuda",), quant_type="float8_dynamic_activation_float8_weight",
                 dtype="bfloat16", decode_mode="cuda-graph", decode_mode_reason="torch.compile of its decode step had not finished "
                 "after 6 minutes on the H200 (1.1B shape, torchao 0.18, torch 2.11; 2026-12-01)"),
        _builtin("ort-dynamic-int8", "onnxruntime", "ONNX Runtime dynamic int8 (quantize_dynamic, QInt8 weights) on an "
                 "exported model with a KV cache", weight_type="QInt8"),
        _builtin("inc-rtn-w4", "neural_compressor", "Intel Neural Compressor weight-only RTN, 4-bit, group size 128",
                 algorithm="rtn", bits=4),
        _builtin("inc-rtn-w8", "neural_compressor", "Intel Neural Compressor weight-only RTN, 8-bit, group size 128",
                 algorithm="rtn", bits=8),
        _builtin("inc-gptq-w4", "neural_compressor", "Intel Neural Compressor weight-only GPTQ, 4-bit, group size 128 "
                 "(minutes on CPU: named on purpose)", default=False, algorithm="gptq", bits=4),
        _builtin("modelopt-fp8", "modelopt", "NVIDIA Model Optimizer fp8 (e4m3) weights and activations, calibrated",
                 format="fp8"),
        _builtin("modelopt-int4-awq", "modelopt", "NVIDIA Model Optimizer int4 AWQ, group size 128, calibrated",
                 format="int4_awq"),
        _builtin("modelopt-nvfp4", "modelopt", "NVIDIA Model Optimizer NVFP4 (fp4 e2m1, fp8 scales per 16) weights and "
                 "activations, calibrated (simulated in PyTorch)", format="nvfp4"),
        _builtin("torchao-nvfp4", "torchao", "torchao NVFP4 weight-only (fp4 e2m1, fp8 scale per 16 and one per tensor), "
                 "bfloat16 compute: emulated, FP4 tensor cores are Blackwell's", quant_type="nvfp4_weight_only",
                 dtype="bfloat16"),
        _builtin("torchao-mxfp4", "torchao", "torchao MXFP4 weights and activations (fp4 e2m1, power-of-two scale per "
                 "32), emulated in bfloat16", quant_type="mxfp4_dynamic", dtype="bfloat16"),
        _builtin("ct-w4a16-g128", "compressed_tensors", "compressed-tensors W4A16 int4 group 128 (pack-quantized), "
                 "round to nearest", scheme="W4A16"),
        _builtin("ct-w8a8-int8", "compressed_tensors", "compressed-tensors W8A8 int8 per-channel weights, dynamic "
                 "per-token int8 activations (int-quantized), round to nearest", scheme="W8A8"),
        _builtin("ct-fp8-dynamic", "compressed_tensors", "compressed-tensors FP8 dynamic (fp8 per-channel weights, "
                 "per-token fp8 activations; CUDA)", devices=("cuda",), scheme="FP8_DYNAMIC"),
        _builtin("autoround-w4g128", "auto_round", "AutoRound W4A16 group 128 (sign-gradient rounding, calibrated), "
                 "exported in its format", bits=4, group_size=128),
        *_kv_recipes(),
        *_gguf_recipes(),
    )
}

def user_recipe(name: str, table: Mapping[str, Any], registry, source: str = "pyproject.toml") -> Recipe:
    """Validate one ``[tool.pytest-quant.recipes.NAME]`` table against its backend's fields and checks."""
    where = f"{source} [tool.pytest-quant.recipes.{name}]"
    if not NAME_PATTERN.match(name):
        raise RecipeError(f"{where}: recipe name {name!r} must match {NAME_PATTERN.pattern}")
    if name in BUILTIN_RECIPES:
        raise RecipeError(f"{where}: {name!r} is a built-in recipe; choose another name")
    if not isinstance(table, Mapping):
        raise RecipeError(f"{where}: expected a table of fields, got {table!r}")
    settings = dict(table)
    backend = settings.pop("backend", None)
    description = settings.pop("description", "")
    decode_mode = settings.pop("decode_mode", None)
    decode_mode_reason = settings.pop("decode_mode_reason", "")
    kv_cache = settings.pop("kv_cache", None)
    if decode_mode is not None and decode_mode not in DECODE_MODES:
        raise RecipeError(f"{where}: decode_mode = {decode_mode!r} is not one of {', '.join(DECODE_MODES)}")
    if not isinstance(decode_mode_reason, str):
        raise RecipeError(f"{where}: decode_mode_reason = {decode_mode_reason!r} must be a string")
    if not isinstance(backend, str) or backend not in registry.names():
        raise RecipeError(f"{where}: backend {backend!r} is not one of {sorted(registry.names())}")
    entry = registry[backend]
    allowed = entry.known_fields()
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise RecipeError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))} for backend {backend!r}; "
            f"known fields: {', '.join(sorted(allowed))}; of every recipe: {', '.join(PLUGIN_FIELDS)}"
        )
    try:
        entry.check(settings)
    except ValueError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    try:
        return Recipe(name, backend, _frozen(settings), description, builtin=False, decode_mode=decode_mode,
                      decode_mode_reason=decode_mode_reason, compared_with=getattr(entry, "reference", "reference"),
                      kv_cache=kv_cache)
    except RecipeError as exc:
        raise RecipeError(f"{where}: {str(exc).partition(': ')[2]}") from None


KNOWN_TOOL_KEYS = ("recipes",)


def load_user_recipes(pyproject: Path, registry) -> tuple[dict[str, Recipe], list[str]]:
    """The recipes of ``[tool.pytest-quant.recipes]``, and warnings about keys the plugin does not read."""
    if not pyproject.is_file():
        return {}, []
    import tomllib

    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{pyproject}: not valid TOML ({exc})") from exc
    tool = data.get("tool", {}).get("pytest-quant", {})
    if not isinstance(tool, Mapping):
        raise RecipeError(f"{pyproject} [tool.pytest-quant]: expected a table, got {tool!r}")
    warnings = [f"{pyproject} [tool.pytest-quant]: unknown key {key!r} ignored; known keys: {', '.join(KNOWN_TOOL_KEYS)}"
                for key in tool if key not in KNOWN_TOOL_KEYS]
    tables = tool.get("recipes", {})
    if not isinstance(tables, Mapping):
        raise RecipeError(f"{pyproject} [tool.pytest-quant]: 'recipes' is {tables!r}; expected a table of recipe "
                          "tables, e.g. [tool.pytest-quant.recipes.my-nf4]")
    return {name: user_recipe(name, table, registry, str(pyproject)) for name, table in tables.items()}, warnings


def select(names: tuple[str, ...] | None, available: Mapping[str, Recipe]) -> list[Recipe]:
    """The recipes named on the command line, in the order given, or every available one."""
    if names is None:
        return list(available.values())
    unknown = [n for n in names if n not in available]
    if unknown:
        raise RecipeError(
            f"--quant-recipes: unknown recipe(s) {', '.join(map(repr, unknown))}; known recipes: {', '.join(available)}"
        )
    return [available[n] for n in dict.fromkeys(names)]


def available_recipes(pyproject: Path, registry, options) -> tuple[list[Recipe], list[str]]:
    """This session's recipes (those named by --quant-recipes, else every built-in and user recipe whose
    backend is installed and runs on the device), and warnings about the pyproject table."""
    user, notes = load_user_recipes(pyproject, registry)
    available = {**BUILTIN_RECIPES, **user}
    if options.recipe_names is not None:
        named = select(options.recipe_names, available)
        refused = [f"{r.name} runs on {', '.join(sorted(r.devices or registry[r.backend].devices))} only ({r.description})"
                   for r in named if not runs_on(r, registry, options.device)]
        if refused:
            raise RecipeError(f"--quant-recipes: not on {options.device}: {'; '.join(refused)}")
        return named, notes
    chosen = [r for r in available.values() if r.default and not missing(r, registry) and runs_on(r, registry, options.device)]
    return chosen, notes


def missing(recipe: Recipe, registry, model_path: Path | None = None) -> list[str]:
    """Import names the recipe needs that are not installed: its backend's, and its KV cache's."""
    names = registry[recipe.backend].missing(model_path)
    if recipe.kv_cache is not None:
        from .measure.kv_cache import missing as kv_missing, parse

        names += kv_missing(parse(recipe.kv_cache))
    return names


def runs_on(recipe: Recipe, registry, device: str) -> bool:
    """Whether the recipe's backend runs on ``device``, and the recipe itself where it is narrower."""
    from .hardware import device_kind

    return registry[recipe.backend].runs_on(device) and (recipe.devices is None or device_kind(device) in recipe.devices)
