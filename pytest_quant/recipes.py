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


class RecipeError(ValueError):
    """A recipe that cannot be used as written; the message names the bad value."""


@dataclass(frozen=True)
class Recipe:
    name: str
    backend: str
    settings: tuple[tuple[str, Any], ...] = ()
    description: str = ""
    builtin: bool = True

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.settings).get(key, default)

    @property
    def options(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.settings}

    @property
    def is_reference(self) -> bool:
        return self.backend == "reference"


def _frozen(settings: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in settings.items()))


def _builtin(name: str, backend: str, description: str, **settings: Any) -> Recipe:
    return Recipe(name, backend, _frozen(settings), description)


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
    )
}

# Not selectable by name: the one recipe of a --quant-model folder that carries its own quantization_config.
PREQUANTIZED = Recipe(
    "prequantized", "gptqmodel", (), "a checkpoint that carries its own quantization_config (GPTQ, AWQ, bitsandbytes)"
)

# The plugin's own recipe fields, beside those of the transformers config class of each backend.
PLUGIN_FIELDS: dict[str, frozenset[str]] = {
    "reference": frozenset({"dtype"}),
    "bitsandbytes": frozenset(),
    "gptqmodel": frozenset(
        {"method", "kernel", "calibration", "calibration_samples", "calibration_seq_len", "version", "batch_size"}
    ),
}
CONFIG_CLASS = {"bitsandbytes": "BitsAndBytesConfig", "gptqmodel": ("GPTQConfig", "AwqConfig")}


def known_fields(backend: str) -> frozenset[str]:
    """The fields a recipe of ``backend`` may set (reads transformers' config signatures lazily)."""
    import inspect

    fields = set(PLUGIN_FIELDS[backend])
    classes = CONFIG_CLASS.get(backend, ())
    if isinstance(classes, str):
        classes = (classes,)
    if classes:
        import transformers

        for cls_name in classes:
            params = inspect.signature(getattr(transformers, cls_name).__init__).parameters
            fields.update(
                n for n, p in params.items() if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
            )
    return frozenset(fields)


def user_recipe(name: str, table: Mapping[str, Any], source: str = "pyproject.toml") -> Recipe:
    """Validate one ``[tool.pytest-quant.recipes.NAME]`` table."""
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
    if backend not in PLUGIN_FIELDS:
        raise RecipeError(f"{where}: backend {backend!r} is not one of {sorted(PLUGIN_FIELDS)}")
    allowed = known_fields(backend)
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise RecipeError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))} for backend {backend!r}; "
            f"known fields: {', '.join(sorted(allowed))}"
        )
    if backend == "bitsandbytes" and not (settings.get("load_in_4bit") or settings.get("load_in_8bit")):
        raise RecipeError(f"{where}: a bitsandbytes recipe needs load_in_4bit = true or load_in_8bit = true")
    if backend == "gptqmodel" and settings.get("method", "gptq") not in ("gptq", "awq"):
        raise RecipeError(f"{where}: method {settings['method']!r} is not one of ['awq', 'gptq']")
    return Recipe(name, backend, _frozen(settings), description, builtin=False)


def load_user_recipes(pyproject: Path) -> dict[str, Recipe]:
    if not pyproject.is_file():
        return {}
    import tomllib

    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{pyproject}: not valid TOML ({exc})") from exc
    tables = data.get("tool", {}).get("pytest-quant", {}).get("recipes", {})
    return {name: user_recipe(name, table, str(pyproject)) for name, table in tables.items()}


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
