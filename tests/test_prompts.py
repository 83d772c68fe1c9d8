"""pytest_quant.prompts: default openings, --quant-prompts files (text and JSONL) and rendering."""

from __future__ import annotations

import json

import pytest

from pytest_quant.prompts import Prompt, default_prompts, read_prompts, render


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from pytest_quant.models import TINY_DIR

    return AutoTokenizer.from_pretrained(TINY_DIR)


def test_default_prompts_are_deterministic_openings():
    prompts = default_prompts()
    assert len(prompts) == 8
    assert prompts == default_prompts()
    assert len({p.text for p in prompts}) == 8
    assert prompts[0].text.startswith("Sir Walter Elliot, of Kellynch Hall")
    assert all(len(p.text.split()) == 12 for p in prompts)


def test_default_prompts_count(tmp_path):
    assert len(default_prompts(3)) == 3
    short = tmp_path / "short.txt"
    short.write_text("Chapter 1\n\nToo short.\n", encoding="utf-8")
    with pytest.raises(ValueError, match="0 paragraphs"):
        default_prompts(1, short)


def test_plain_text_one_prompt_a_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("The capital of France is\n\n   \nOnce upon a time,\n", encoding="utf-8")
    prompts = read_prompts(path)
    assert [p.text for p in prompts] == ["The capital of France is", "Once upon a time,"]
    assert prompts[1].source == f"{path}:4"


def test_jsonl_prompt_and_messages(tmp_path):
    path = tmp_path / "prompts.jsonl"
    lines = [
        json.dumps({"prompt": "Hello there", "id": 7}),
        "",
        json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    first, second = read_prompts(path)
    assert first == Prompt(text="Hello there", source=f"{path}:1")
    assert second.messages == (("system", "Be brief."), ("user", "Hi?"))
    assert second.display == "Hi?"
    assert second.source == f"{path}:3"


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "a JSON list, not an object"),
        ('{"text": "x"}', 'neither of "prompt" and "messages"'),
        ('{"prompt": "x", "messages": []}', 'both of "prompt" and "messages"'),
        ('{"prompt": ""}', '"prompt" is \'\''),
        ('{"prompt": 3}', '"prompt" is 3'),
        ('{"messages": []}', '"messages" is \\[\\]'),
        ('{"messages": "hi"}', '"messages" is \'hi\''),
        ('{"messages": [{"role": "user"}]}', '"messages"\\[0\\]'),
        ('{"messages": [{"role": "user", "content": "a"}, "b"]}', '"messages"\\[1\\]'),
        ('{"messages": [{"role": "", "content": "a"}]}', '"messages"\\[0\\]'),
    ],
)
def test_bad_jsonl_names_file_line_and_format(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "fine"}) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message) as error:
        read_prompts(path)
    assert f"{path}:2" in str(error.value)
    assert 'must be a JSON object with "prompt"' in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        read_prompts(tmp_path / "absent.txt")


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        read_prompts(path)


@pytest.mark.parametrize("name, message", [("empty.txt", "one prompt a line"), ("empty.jsonl", "a JSON object a line")])
def test_empty_file(tmp_path, name, message):
    path = tmp_path / name
    path.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"no prompts .*{message}"):
        read_prompts(path)


def test_render_text_uses_the_tokenizers_own_encoding(tokenizer):
    prompt = Prompt(text="Sir Walter Elliot")
    assert render(prompt, tokenizer) == tokenizer("Sir Walter Elliot")["input_ids"]


def test_render_chat_without_template_names_file_and_line(tokenizer, tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n", encoding="utf-8")
    (prompt,) = read_prompts(path)
    assert not tokenizer.chat_template
    with pytest.raises(ValueError, match=f"{path}:1.*no chat template|{path}:1.*has none"):
        render(prompt, tokenizer)


def test_render_chat_with_template(tokenizer):
    import copy

    chat = copy.deepcopy(tokenizer)
    chat.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    prompt = Prompt(messages=(("user", "Where is Kellynch Hall?"),))
    expected = chat("user: Where is Kellynch Hall?\nassistant:", add_special_tokens=False)["input_ids"]
    assert render(prompt, chat) == expected
