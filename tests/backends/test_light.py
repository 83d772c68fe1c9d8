"""The backends' light side: importing a backend module imports no quantization library, and each validates
its recipe fields (naming the field, the value and what is accepted) before any model loads."""

from __future__ import annotations

import subprocess
import sys

import pytest




# -- light imports and validation --------------------------------------------------------------------------

MODULES = {
    "torch_dynamic": (),
    "torchao": ("torchao",),
    "onnxruntime": ("onnxruntime", "onnx", "onnxscript"),
    "neural_compressor": ("neural_compressor",),
    "modelopt": ("modelopt",),
}


def test_backend_modules_import_no_library():
    """Each module can be imported (its FIELDS, validate and install hint read) without its library."""
    heavy = sorted({name for names in MODULES.values() for name in names})
    code = (
        "import sys\n"
        + "".join(f"import pytest_quant.backends.{m}\n" for m in MODULES)
        + f"loaded = [n for n in {heavy!r} if n in sys.modules]\n"
        + "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "module, settings, words",
    [
        ("torch_dynamic", {"api": "torch.fx"}, ["api", "torch.fx", "torchao"]),
        ("torch_dynamic", {"api": "torchao", "weight_dtype": "float16"}, ["weight_dtype", "float16", "qint8"]),
        ("torch_dynamic", {"bits": 4}, ["bits", "accepted"]),
        ("torchao", {"quant_type": "int3"}, ["quant_type", "int3", "int8_weight_only"]),
        ("torchao", {"quant_type": "int8_dynamic_activation_int8_weight", "group_size": 64}, ["group_size"]),
        ("torchao", {"quant_type": "intx_weight_only", "bits": 9}, ["bits", "9"]),
        ("onnxruntime", {"weight_type": "QInt4"}, ["weight_type", "QInt4", "QInt8"]),
        ("onnxruntime", {"opset": 9}, ["opset", "9"]),
        ("neural_compressor", {"algorithm": "awq"}, ["algorithm", "awq", "rtn"]),
        ("neural_compressor", {"bits": 5}, ["bits", "5"]),
        ("neural_compressor", {"algorithm": "rtn", "calibration_samples": 8}, ["calibration_samples", "rtn"]),
        ("modelopt", {"format": "nvfp8"}, ["format", "nvfp8", "nvfp4"]),
    ],
)
def test_validate_names_field_value_and_accepted(module, settings, words):
    import importlib

    backend = importlib.import_module(f"pytest_quant.backends.{module}")
    with pytest.raises(ValueError) as info:
        backend.validate(settings)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_builtin_recipes_validate(module):
    import importlib

    from pytest_quant.recipes import BUILTIN_RECIPES

    backend = importlib.import_module(f"pytest_quant.backends.{module}")
    recipes = [recipe for recipe in BUILTIN_RECIPES.values() if recipe.backend == module]
    assert recipes, f"no built-in recipe of {module}"
    for recipe in recipes:
        assert recipe.description and recipe.name == recipe.name.lower()
        backend.validate(dict(recipe.options))
        assert set(recipe.options) <= backend.FIELDS
