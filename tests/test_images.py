"""Reading --quant-images: a folder or JSONL, every bad line named file:line, every image opened."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_quant.images import DEFAULT_QUESTION, DRAWINGS, default_images, draw, open_image, read_images, render
from pytest_quant.models import ModelSource


def _png(path: Path, color: str = "red") -> Path:
    from PIL import Image

    Image.new("RGB", (8, 8), color).save(path)
    return path


def test_a_folder_asks_every_image_the_seeds_question(tmp_path: Path) -> None:
    _png(tmp_path / "b.png"), _png(tmp_path / "a.jpg", "blue")
    (tmp_path / "notes.txt").write_text("not an image")
    prompts = read_images(tmp_path)
    assert [Path(p.image).name for p in prompts] == ["a.jpg", "b.png"]
    assert {p.question for p in prompts} == {DEFAULT_QUESTION}
    assert prompts[0].display == f"[image a.jpg] {DEFAULT_QUESTION}"


def test_jsonl_prompts_and_chats_resolve_paths_beside_the_file(tmp_path: Path) -> None:
    _png(tmp_path / "cat.png")
    chat = {"messages": [{"role": "user", "content": [{"type": "image", "image": "cat.png"},
                                                       {"type": "text", "text": "Which animal?"}]}]}
    (tmp_path / "p.jsonl").write_text(json.dumps({"image": "cat.png", "prompt": "Colour?"}) + "\n\n" + json.dumps(chat))
    first, second = read_images(tmp_path / "p.jsonl")
    assert first.image == second.image == str(tmp_path / "cat.png")
    assert (first.text, second.text) == ("Colour?", "Which animal?")
    assert second.source == f"{tmp_path / 'p.jsonl'}:3"


@pytest.mark.parametrize("line, said", [
    ("{not json", "not valid JSON"),
    ('["a"]', "not an object"),
    ('{"image": "cat.png"}', '"prompt" is None'),
    ('{"image": "missing.png", "prompt": "x"}', "missing.png: no such file"),
    ('{"image": "bad.png", "prompt": "x"}', "cannot be read as an image"),
    ('{"messages": [{"role": "user", "content": "no image"}]}', "0 image parts"),
    ('{"messages": [{"role": "user", "content": [{"type": "video", "video": "v.mp4"}]}]}', "neither a text nor an image"),
])
def test_a_bad_line_is_named_with_its_file_and_line(tmp_path: Path, line: str, said: str) -> None:
    _png(tmp_path / "cat.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    path = tmp_path / "p.jsonl"
    path.write_text('{"image": "cat.png", "prompt": "fine"}\n' + line + "\n")
    with pytest.raises(ValueError, match=said) as error:
        read_images(path)
    assert f"{path}:2" in str(error.value)


@pytest.mark.parametrize("make, said", [
    (lambda p: p / "none", "no such file or folder"),
    (lambda p: (p / "x.txt").write_text("x") and p / "x.txt", "neither a folder of images nor a .jsonl"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no image files"),
])
def test_a_path_that_holds_no_image_prompts_says_what_is_accepted(tmp_path: Path, make, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        read_images(make(tmp_path))


def test_the_embedded_drawings_are_the_same_pixels_each_time() -> None:
    prompts = default_images()
    assert [p.source for p in prompts] == list(DRAWINGS)
    assert open_image(prompts[1]).tobytes() == draw(1).tobytes()
    assert len({draw(i).tobytes() for i in range(len(DRAWINGS))}) == len(DRAWINGS)


class _Processor:
    image_token = "<img>"

    def __init__(self, template):
        self.chat_template = template

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize
        return "|".join(p.get("text", "IMAGE") for m in messages for p in m["content"])


def test_render_uses_the_chat_template_else_the_image_token() -> None:
    prompt = default_images()[0]
    assert render(prompt, _Processor("{{ x }}")) == f"IMAGE|{DEFAULT_QUESTION}"
    assert render(prompt, _Processor(None)) == f"<img>\n{DEFAULT_QUESTION}"


def test_images_for_text_models_only_is_a_problem(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    from pytest_quant.models import TINY_DIR
    from pytest_quant.models.vision import images_problem

    problem = images_problem(tmp_path, [ModelSource("tiny", TINY_DIR)])
    assert "none of the models takes images (tiny: no vision_config" in problem


def test_chat_images_for_a_model_without_a_chat_template_is_a_problem(tmp_path: Path) -> None:
    from pytest_quant.models.vision import images_problem

    _png(tmp_path / "cat.png")
    model = tmp_path / "vlm"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llava", "vision_config": {"model_type": "siglip"}}))
    chat = {"messages": [{"role": "user", "content": [{"type": "image", "image": "cat.png"}, {"type": "text", "text": "?"}]}]}
    (tmp_path / "p.jsonl").write_text(json.dumps({"image": "cat.png", "prompt": "x"}) + "\n" + json.dumps(chat) + "\n")
    problem = images_problem(tmp_path / "p.jsonl", [ModelSource("vlm", model)])
    assert problem.startswith(f"--quant-images {tmp_path / 'p.jsonl'}:2: a chat prompt, and vlm has no chat template")
    (model / "chat_template.jinja").write_text("{{ messages }}")
    assert images_problem(tmp_path / "p.jsonl", [ModelSource("vlm", model)]) is None
