"""The llama_cpp backend's light side: its recipe fields are checked before any model loads (the bad value and
what is accepted named), and the module imports nothing of llama.cpp."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pytest_quant.backends.llama_cpp_spec import (DEFAULT_THREADS, GGUF_PREQUANTIZED, canonical_type, decode_mode,
                                                  unavailable_reason, validate)
from pytest_quant.models import TINY_DIR
from pytest_quant.recipes import BUILTIN_RECIPES, GGUF_REFERENCE


def test_the_spec_imports_no_llama_cpp():
    code = ("import sys\nimport pytest_quant.backends.llama_cpp_spec, pytest_quant.backends.gguf_convert\n"
            "import pytest_quant.models.gguf_header\n"
            "assert not [n for n in ('llama_cpp', 'gguf', 'torch') if n in sys.modules]\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("written, canonical", [("q4_k_m", "Q4_K_M"), ("Q8_0", "Q8_0"), ("iq4_xs", "IQ4_XS"),
                                                 ("Q4_K", "Q4_K"), ("bf16", "BF16")])
def test_a_type_is_named_as_llama_cpp_names_it_whatever_its_case(written, canonical):
    assert canonical_type(written) == canonical


@pytest.mark.parametrize("value", ["Q4_K_X", "q4", "", 4, None])
def test_an_unknown_type_names_the_value_and_every_accepted_type(value):
    with pytest.raises(ValueError) as error:
        validate({"type": value})
    message = str(error.value)
    assert repr(value) in message and "accepted:" in message
    assert all(name in message for name in ("Q4_K_M", "Q8_0", "IQ4_XS", "Q6_K", "TQ2_0"))


@pytest.mark.parametrize("settings, words", [
    ({"type": "Q4_0", "bits": 4}, ["unknown field", "bits", "imatrix"]),
    ({"type": "Q4_0", "source_type": "F8"}, ["source_type", "'F8'", "F32, F16, BF16"]),
    ({"type": "Q4_0", "threads": 0}, ["threads", "0", "positive"]),
    ({"type": "Q4_0", "threads": True}, ["threads", "True"]),
    ({"type": "Q4_0", "n_gpu_layers": -2}, ["n_gpu_layers", "-2"]),
    ({"type": "Q4_0", "imatrix": "no/such/imatrix.gguf"}, ["imatrix", "no/such/imatrix.gguf", "not a file"]),
    ({"imatrix": "x.gguf"}, ["imatrix", "without a type"]),
    ({"type": "IQ2_XXS"}, ["IQ2_XXS", "needs an importance matrix", "imatrix ="]),
])
def test_bad_fields_name_the_field_and_the_value(settings, words):
    with pytest.raises(ValueError) as error:
        validate(settings)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_good_fields_pass(tmp_path: Path):
    imatrix = tmp_path / "imatrix.gguf"
    imatrix.write_bytes(b"GGUF")
    validate({"type": "IQ2_XXS", "imatrix": str(imatrix), "threads": 4, "n_gpu_layers": 0, "source_type": "f32"})
    validate({})  # gguf-reference: the unquantized file itself


def test_the_builtin_gguf_recipes_are_compared_with_the_unquantized_gguf():
    names = ["gguf-q8_0", "gguf-q6_k", "gguf-q5_k_m", "gguf-q4_k_m", "gguf-q4_0", "gguf-iq4_xs"]
    for name in names:
        recipe = BUILTIN_RECIPES[name]
        validate(recipe.options)
        assert recipe.backend == "llama_cpp" and recipe.compared_with == GGUF_REFERENCE and not recipe.is_reference
        assert canonical_type(recipe.options["type"]) == name.removeprefix("gguf-").upper()
    reference = BUILTIN_RECIPES[GGUF_REFERENCE]
    assert reference.is_reference and reference.compared_with == "reference" and "type" not in reference.options
    assert GGUF_PREQUANTIZED.compared_with == GGUF_PREQUANTIZED.name


def test_the_decode_mode_records_the_thread_count():
    assert decode_mode(DEFAULT_THREADS) == "llama.cpp-t2" and decode_mode(8) == "llama.cpp-t8"


def test_which_recipe_runs_on_which_model(tmp_path: Path):
    gguf_file = tmp_path / "m.gguf"
    gguf_file.write_bytes(b"GGUF")
    assert "needs a Hugging Face model folder" in unavailable_reason(BUILTIN_RECIPES["bnb-nf4"], gguf_file)
    assert unavailable_reason(BUILTIN_RECIPES["gguf-q4_0"], gguf_file) is None
    assert unavailable_reason(BUILTIN_RECIPES["gguf-q4_0"], TINY_DIR) is None
    assert unavailable_reason(BUILTIN_RECIPES["bnb-nf4"], TINY_DIR) is None
    other = tmp_path / "qwen"
    other.mkdir()
    (other / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"]}')
    reason = unavailable_reason(BUILTIN_RECIPES["gguf-q4_0"], other)
    assert "gguf-q4_0" in reason and "Qwen2ForCausalLM" in reason and "cannot be converted" in reason
