"""Prompts for generation agreement: openings of the embedded held-out text, or a ``--quant-prompts`` file.

A file is read and checked without a tokenizer (``read_prompts``), so that a bad file is a usage error at
start-up, before any model loads; ``render`` turns a prompt into token ids once the tokenizer is known.

Accepted files: ``*.jsonl``, one JSON object a line with ``"prompt": "<text>"`` or ``"messages": [{"role":
..., "content": ...}, ...]`` (rendered with the tokenizer's chat template); anything else is plain text, one
prompt a line. Blank lines are ignored in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .jsonl import json_object

DEFAULT_PROMPTS = 8
OPENING_WORDS = 12  # a default prompt is the first this many words of a paragraph
MIN_PARAGRAPH_WORDS = 30  # headings, dates and short lines of dialogue do not make openings

JSONL_HELP = (
    'each line of a .jsonl prompts file must be a JSON object with "prompt" (a non-empty string) or '
    '"messages" (a non-empty list of {"role": "...", "content": "..."} objects)'
)


@dataclass(frozen=True)
class Prompt:
    """A plain-text prompt (``text``) or a chat (``messages``: (role, content) pairs); ``source`` is file:line."""

    text: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None
    source: str = ""

    @property
    def display(self) -> str:
        """What a report shows for the prompt: its text, or the chat's last message."""
        return self.text if self.text is not None else self.messages[-1][1]


def default_prompts(n: int = DEFAULT_PROMPTS, path: Path | None = None) -> tuple[Prompt, ...]:
    """The first ``OPENING_WORDS`` words of ``n`` paragraphs spread evenly over the held-out text.

    Only paragraphs of at least ``MIN_PARAGRAPH_WORDS`` words qualify; the same text always gives the same
    prompts.
    """
    if path is None:
        from .models import embedded_eval_text

        path = embedded_eval_text()
    paragraphs = [p.split() for p in Path(path).read_text(encoding="utf-8").split("\n\n")]
    eligible = [words for words in paragraphs if len(words) >= MIN_PARAGRAPH_WORDS]
    if n < 1 or n > len(eligible):
        raise ValueError(f"{path} has {len(eligible)} paragraphs to take prompts from; asked for {n}")
    picked = [eligible[i * len(eligible) // n] for i in range(n)]
    return tuple(Prompt(text=" ".join(words[:OPENING_WORDS]), source=f"{path}") for words in picked)


def read_prompts(path) -> tuple[Prompt, ...]:
    """Parse a prompts file; ValueError naming the file, the line and what is accepted."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ValueError(f"prompts file {path}: no such file") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"prompts file {path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise ValueError(f"prompts file {path}: cannot be read ({error.strerror})") from None
    jsonl = path.suffix.lower() == ".jsonl"
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        source = f"{path}:{number}"
        prompts.append(_json_prompt(line, source) if jsonl else Prompt(text=line, source=source))
    if not prompts:
        kind = "a JSON object a line" if jsonl else "one prompt a line"
        raise ValueError(f"prompts file {path}: no prompts (it should hold {kind}; blank lines are ignored)")
    return tuple(prompts)


def _json_prompt(line: str, source: str) -> Prompt:
    record = json_object(line, f"prompts file {source}", JSONL_HELP)
    if ("prompt" in record) == ("messages" in record):
        which = "both" if "prompt" in record else "neither"
        raise ValueError(f'prompts file {source}: has {which} of "prompt" and "messages"; {JSONL_HELP}')
    if "prompt" in record:
        text = record["prompt"]
        if not isinstance(text, str) or not text:
            raise ValueError(f'prompts file {source}: "prompt" is {text!r}; {JSONL_HELP}')
        return Prompt(text=text, source=source)
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError(f'prompts file {source}: "messages" is {messages!r}; {JSONL_HELP}')
    pairs = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(role, str) or not role or not isinstance(content, str):
            raise ValueError(f'prompts file {source}: "messages"[{index}] is {message!r}; {JSONL_HELP}')
        pairs.append((role, content))
    return Prompt(messages=tuple(pairs), source=source)


def render(prompt: Prompt, tokenizer) -> list[int]:
    """The prompt's token ids: plain text as the tokenizer encodes it (its own special tokens, such as BOS),
    a chat through the tokenizer's chat template with the generation prompt added."""
    if prompt.text is not None:
        return list(tokenizer(prompt.text, verbose=False)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"prompts file {prompt.source}: chat \"messages\" need a tokenizer with a chat template, and "
            f"{getattr(tokenizer, 'name_or_path', 'this tokenizer') or 'this tokenizer'} has none; "
            'give the prompt as "prompt" text instead'
        )
    messages = [{"role": role, "content": content} for role, content in prompt.messages]
    # the template writes its own special tokens (BOS included), so the text is encoded without adding more
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


# A token of any vocabulary pytest-quant has met is at most this many UTF-8 bytes, so a prompt of B bytes is
# at least B / MAX_TOKEN_BYTES tokens: the bound used where the folder has no tokenizer.json to count with.
MAX_TOKEN_BYTES = 32


@dataclass(frozen=True)
class TokenCounter:
    """Counts a prompt's tokens for the start-up check: exactly with the folder's tokenizer.json (the
    ``tokenizers`` library, no torch; ``source`` names the file), else None: the UTF-8 length bound is used."""

    count: Callable[[str], int] | None
    source: str | None = None


def token_counter(model_path: Path) -> TokenCounter:
    tokenizer_file = Path(model_path) / "tokenizer.json"
    if tokenizer_file.is_file():
        try:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception:  # a tokenizers too old for the file, or none installed: fall back to the bound
            return TokenCounter(None)
        return TokenCounter(lambda text: len(tokenizer.encode(text).ids), str(tokenizer_file))
    return TokenCounter(None)


def prompt_text(prompt: Prompt) -> str:
    """The text whose tokens a prompt holds at least (a chat's contents; its template only adds tokens)."""
    return prompt.text if prompt.text is not None else "\n".join(content for _, content in prompt.messages)


def prompt_tokens(prompt: Prompt, counter: TokenCounter, context: int) -> tuple[int, str]:
    """How many tokens ``prompt`` holds and how that was found: the byte bound when it already reaches
    ``context`` (a 1 MB line is not tokenized) or no tokenizer.json counts, else the tokenizer's count (a
    chat's without its template, so a lower bound too)."""
    size = len(prompt_text(prompt).encode("utf-8"))
    bound = -(-size // MAX_TOKEN_BYTES)
    if bound >= context or counter.count is None:
        return bound, f"at least {bound} tokens ({size} UTF-8 bytes, a token being at most {MAX_TOKEN_BYTES} bytes)"
    tokens = counter.count(prompt_text(prompt))
    chat = ", before the chat template's own tokens" if prompt.messages is not None else ""
    return tokens, f"{tokens} tokens (counted with {counter.source}{chat})"


def check_fits(prompts: tuple[Prompt, ...], context: int, counter: TokenCounter, model: str) -> None:
    """ValueError naming file:line for the first prompt that leaves no room for a generated token in a
    ``context``-token model."""
    for prompt in prompts:
        tokens, how = prompt_tokens(prompt, counter, context)
        if tokens >= context:
            raise ValueError(
                f"prompts file {prompt.source}: the prompt is {how}, and {model}'s context is {context} tokens "
                "(max_position_embeddings in its config.json); shorten it to fewer than "
                f"{context} tokens, leaving room for the generated ones")


def check_chat_template(prompts: tuple[Prompt, ...], has_template: bool, model: str) -> None:
    """ValueError naming file:line of the first chat prompt when the model's tokenizer has no chat template."""
    if has_template:
        return
    for prompt in prompts:
        if prompt.messages is not None:
            raise ValueError(
                f'prompts file {prompt.source}: chat "messages" need a tokenizer with a chat template, and {model} '
                "has none (no chat_template in tokenizer_config.json, no chat_template.jinja); give the prompt as "
                '"prompt" text instead')
