"""A line of a JSONL file as a JSON object: the one check the prompts, task and image files share (a bad line is a
start-up usage error naming ``file:line``)."""

from __future__ import annotations

import json


def json_object(line: str, where: str, help_text: str) -> dict:
    """The JSON object ``line`` holds; ValueError ``"<where>: not valid JSON (<reason>); <help_text>"`` or
    ``"<where>: a JSON <type>, not an object; <help_text>"``."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg}); {help_text}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: a JSON {type(value).__name__}, not an object; {help_text}")
    return value
