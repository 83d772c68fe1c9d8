"""An image-text-to-text model gated end to end (a random-weight LLaVA built once per session: its quality figures
mean nothing, its paths and memory are real): the seed's five-line test under bnb nf4 with a skip list and LLM.int8,
the report's language-part memory and answers, what skips and what is refused at start-up."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

FAST = ("-p", "no:cacheprovider")
SEED_TEST = """
import pytest

@pytest.mark.vram_budget(ratio=0.5)
@pytest.mark.generation_agreement(tokens=8, min_prefix_tokens=1)
@pytest.mark.kl_divergence(max_mean=10.0)
def test_quantized(quant_model):
    assert quant_model.model is not None
"""
RECIPES = """
[tool.pytest-quant.recipes.nf4-vlm]
backend = "bitsandbytes"
load_in_4bit = true
bnb_4bit_quant_type = "nf4"
bnb_4bit_use_double_quant = true
llm_int8_skip_modules = ["model.multi_modal_projector", "lm_head"]

[tool.pytest-quant.recipes.torchao-int8wo-vlm]
backend = "torchao"
quant_type = "int8_weight_only"
modules_to_not_convert = ["model.multi_modal_projector", "lm_head"]

[tool.pytest-quant.recipes.nf4-bad-skip]
backend = "bitsandbytes"
load_in_4bit = true
llm_int8_skip_modules = ["multi_modal_projector", "lm_head"]
"""


@pytest.fixture(scope="session")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("bitsandbytes")
    from pytest_quant.models.build_vlm import build_vlm

    return build_vlm(tmp_path_factory.mktemp("models") / "tiny-vlm")


def test_the_seeds_example_gates_a_vision_language_model(pytester: pytest.Pytester, vlm: Path) -> None:
    pytester.makepyfile(test_seed=SEED_TEST)
    pytester.makepyprojecttoml(RECIPES)
    report = pytester.path / "report.json"
    torchao = importlib.util.find_spec("torchao") is not None  # torchao-int8wo: the projector and head kept too
    result = pytester.runpytest(*FAST, f"--quant-model={vlm}", "-rs", f"--quant-report={report}",
                                "--quant-recipes=reference,nf4-vlm,bnb-int8,torch-dynamic-int8,nf4-bad-skip"
                                + (",torchao-int8wo-vlm" if torchao else ""))
    result.assert_outcomes(passed=3 + torchao, skipped=1, errors=1)
    result.stdout.fnmatch_lines([
        "*ValueError: recipe nf4-bad-skip: llm_int8_skip_modules: 'multi_modal_projector' matches no module (write "
        "'model.multi_modal_projector') among the linear layers of LlavaForConditionalGeneration*",
        "SKIPPED * recipe torch-dynamic-int8: backend torch_dynamic loads causal language models only; tiny-vlm is an "
        "image-text-to-text model (reference, bitsandbytes, torchao and gptqmodel recipes gate it)"], consecutive=False)
    header = next(line for line in result.stdout.lines if line.startswith("model "))
    assert "LM part" in header
    rows = {r["recipe"]: r for r in json.loads(report.read_text())["results"]}
    nf4, int8, reference = rows["nf4-vlm"], rows["bnb-int8"], rows["reference"]
    for row in (nf4, int8):  # the seed's before/after answers, side by side in the report
        sample = row["generation_sample"]
        assert sample["prompt"] == "[image a red circle on white] What is in this picture?"
        assert sample["reference"] and sample["output"]
    # the figures mean what they mean for a text model
    assert nf4["mean_kl_nats"] > int8["mean_kl_nats"] > 0  # 4 bits lose more than 8, both something
    for row in (nf4, int8, reference):
        assert 0 < row["vram_language_bytes"] < row["vram_resident_bytes"]  # the vision tower and projector beside it
        assert row["generation_prompts"] == 4 and row["generation_s"] > 0  # the embedded drawings, answered
    assert nf4["eval_tokens"] == int8["eval_tokens"] == reference["eval_tokens"] <= 4 * 32  # the reference's answers
    assert nf4["vram_resident_bytes"] < int8["vram_resident_bytes"] < 0.5 * reference["vram_resident_bytes"]
    if torchao:
        assert rows["torchao-int8wo-vlm"]["kernel"] == "Linear(Int8Tensor)"
        assert 0 < rows["torchao-int8wo-vlm"]["mean_kl_nats"] < nf4["mean_kl_nats"]


def test_a_bad_images_line_stops_the_run_before_any_model_loads(pytester: pytest.Pytester, vlm: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(pytester.path / "cat.png")
    (pytester.path / "images.jsonl").write_text('{"image": "cat.png", "prompt": "Colour?"}\n{"image": "dog.png"}\n')
    pytester.makepyfile(test_seed=SEED_TEST)
    result = pytester.runpytest(*FAST, f"--quant-model={vlm}", "--quant-images=images.jsonl")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--quant-images 'images.jsonl': images.jsonl:2: \"prompt\" is None*"])
    assert "loading" not in result.stdout.str()


def test_images_ini_twin_is_checked_and_needs_a_model_that_takes_images(pytester: pytest.Pytester) -> None:
    pytester.mkdir("pictures")
    pytester.makeini("[pytest]\nquant_images = pictures\n")
    pytester.makepyfile(test_seed=SEED_TEST)
    result = pytester.runpytest(*FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini quant_images = 'pictures': *images folder pictures: no image files*"])
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(pytester.path / "pictures" / "a.png")
    result = pytester.runpytest(*FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--quant-images pictures: none of the models takes images (tiny: *"])


def test_its_decode_is_timed_in_the_mode_asked_with_the_image_in_the_prefill(pytester: pytest.Pytester,
                                                                             vlm: Path) -> None:
    # a vision-language model's decode steps are its language model's (the image is in the KV cache after the
    # prefill): compiled as a text model's are, not silently eager (on CPU, "compiled" is the step compiled)
    pytester.makepyfile(test_speed="""
import pytest

@pytest.mark.tokens_per_second(min=0.1)
def test_decode(quant_model):
    assert quant_model.model is not None
""")
    report = pytester.path / "report.json"
    result = pytester.runpytest(*FAST, f"--quant-model={vlm}", "--quant-recipes=reference", "--quant-decode-mode=compiled",
                                f"--quant-report={report}")
    result.assert_outcomes(passed=1)
    (row,) = json.loads(report.read_text())["results"]
    assert row["decode_mode"] == "compiled" and row.get("fallback_reason") is None
    assert row["decode_tokens_per_s"] > 0


def test_gptq_and_awq_quantize_its_language_model_and_keep_the_rest(pytester: pytest.Pytester, vlm: Path) -> None:
    pytest.importorskip("gptqmodel")
    pytester.makepyfile(test_seed=SEED_TEST)
    report = pytester.path / "report.json"
    result = pytester.runpytest(*FAST, f"--quant-model={vlm}", f"--quant-report={report}",
                                "--quant-recipes=reference,gptq-w4g128,awq-w4g128")
    result.assert_outcomes(passed=3)
    rows = {r["recipe"]: r for r in json.loads(report.read_text())["results"]}
    reference = rows["reference"]
    outside = reference["vram_resident_bytes"] - reference["vram_language_bytes"]  # tower and projector
    for name, kernel in (("gptq-w4g128", "TorchLinear"), ("awq-w4g128", "AwqTorchLinear")):
        row = rows[name]
        assert row["kernel"] == kernel  # the language model's layers only: the rest are torch's own Linear
        # GPTQModel quantizes the decoder's layers; the vision tower and the projector are kept as they were
        assert row["vram_resident_bytes"] - row["vram_language_bytes"] == outside  # each storage counted once
        assert row["vram_language_bytes"] < 0.5 * reference["vram_language_bytes"]
        assert row["mean_kl_nats"] > 0 and row["generation_sample"]["output"]
