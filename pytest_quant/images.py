"""Image prompts for image-text-to-text models: a ``--quant-images`` folder or JSONL file, or images drawn here.

Read and checked without a model (``read_images``: every image must open), so that a bad path or line is a usage
error at start-up naming ``file:line``; ``render`` turns a prompt into the processor's text once it is known.

Accepted: a folder of images (each asked ``DEFAULT_QUESTION``, the seed's "what is in this picture?"), or
``*.jsonl``, one JSON object a line: ``{"image": "<path>", "prompt": "<text>"}`` or chat ``{"messages": [...]}``
whose contents hold exactly one image part (``{"type": "image", "image": "<path>"}``) and text parts, rendered by
the processor's chat template. Paths are relative to the JSONL file's folder. Blank lines are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .jsonl import json_object

DEFAULT_QUESTION = "What is in this picture?"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
DRAWN = "drawn:"  # an embedded image, drawn by ``draw``: no file ships with the package
DRAWINGS = ("a red circle on white", "a blue square on yellow", "a green triangle on black", "grey stripes")
DRAWN_PIXELS = 96
JSONL_HELP = ('each line of a .jsonl images file must be a JSON object with "image" (a path) and "prompt" (a '
              'non-empty string), or "messages" (a list of {"role": ..., "content": [...]} objects whose contents '
              'hold exactly one {"type": "image", "image": "<path>"} part)')


@dataclass(frozen=True)
class ImagePrompt:
    """One image and what is asked about it: a question, or a chat (``messages_json``) with one image part."""

    image: str  # a file path, or DRAWN + the index of an embedded drawing
    question: str | None = None
    messages_json: str | None = None  # the chat as given, its image part's path resolved
    source: str = ""  # file:line, the folder's file, or the drawing

    @property
    def display(self) -> str:
        """What a report shows: the image's name and the question (a chat's last text part)."""
        return f"[image {Path(self.image).name if not self.image.startswith(DRAWN) else self.source}] {self.text}"

    @property
    def text(self) -> str:
        if self.question is not None:
            return self.question
        parts = [p for m in json.loads(self.messages_json) for p in _parts(m.get("content"))]
        return next((str(p.get("text")) for p in reversed(parts) if p.get("type") == "text"), "")


def default_images() -> tuple[ImagePrompt, ...]:
    """The embedded image prompts: ``DRAWINGS``, each asked ``DEFAULT_QUESTION``."""
    return tuple(ImagePrompt(f"{DRAWN}{i}", DEFAULT_QUESTION, source=name) for i, name in enumerate(DRAWINGS))


def draw(index: int):
    """An embedded image (PIL, RGB): the same pixels on every machine."""
    from PIL import Image, ImageDraw

    background = ("white", "yellow", "black", "white")[index]
    image = Image.new("RGB", (DRAWN_PIXELS, DRAWN_PIXELS), background)
    pen = ImageDraw.Draw(image)
    edge = DRAWN_PIXELS
    if index == 0:
        pen.ellipse((16, 16, edge - 16, edge - 16), fill="red")
    elif index == 1:
        pen.rectangle((20, 20, edge - 20, edge - 20), fill="blue")
    elif index == 2:
        pen.polygon(((edge // 2, 12), (12, edge - 12), (edge - 12, edge - 12)), fill="green")
    else:
        for x in range(0, edge, 16):
            pen.rectangle((x, 0, x + 7, edge), fill="grey")
    return image


def open_image(prompt: ImagePrompt):
    """The prompt's image, RGB."""
    from PIL import Image

    if prompt.image.startswith(DRAWN):
        return draw(int(prompt.image[len(DRAWN):]))
    with Image.open(prompt.image) as image:
        return image.convert("RGB")


def read_images(path) -> tuple[ImagePrompt, ...]:
    """A folder of images or a JSONL file, every image opened; ValueError naming the file (and line) and what is
    accepted."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"images folder {path}: no image files ({', '.join('*' + s for s in IMAGE_SUFFIXES)})")
        prompts = tuple(ImagePrompt(str(p), DEFAULT_QUESTION, source=str(p)) for p in files)
    elif path.is_file() and path.suffix.lower() == ".jsonl":
        prompts = _read_jsonl(path)
    elif path.is_file():
        raise ValueError(f"images {path}: neither a folder of images nor a .jsonl file of image prompts")
    else:
        raise ValueError(f"images {path}: no such file or folder; give a folder of images or a .jsonl file")
    for prompt in prompts:
        _check_opens(prompt)
    return prompts


def _read_jsonl(path: Path) -> tuple[ImagePrompt, ...]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"images file {path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise ValueError(f"images file {path}: cannot be read ({error.strerror})") from None
    prompts = [_json_prompt(line, f"{path}:{n}", path.parent) for n, line in enumerate(lines, 1) if line.strip()]
    if not prompts:
        raise ValueError(f"images file {path}: no image prompts (blank lines are ignored); {JSONL_HELP}")
    return tuple(prompts)


def _json_prompt(line: str, source: str, folder: Path) -> ImagePrompt:
    item = json_object(line, source, JSONL_HELP)
    if "messages" in item:
        return _chat_prompt(item["messages"], source, folder)
    image, prompt = item.get("image"), item.get("prompt")
    if not isinstance(image, str) or not image.strip():
        raise ValueError(f"{source}: \"image\" is {image!r}, not a path; {JSONL_HELP}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{source}: \"prompt\" is {prompt!r}, not a non-empty string; {JSONL_HELP}")
    return ImagePrompt(str(folder / image), prompt, source=source)


def _parts(content) -> list:
    return content if isinstance(content, list) else [{"type": "text", "text": content}]


def _chat_prompt(messages, source: str, folder: Path) -> ImagePrompt:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{source}: \"messages\" is {messages!r}, not a non-empty list; {JSONL_HELP}")
    images = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError(f"{source}: message {message!r} has no \"role\"; {JSONL_HELP}")
        for part in _parts(message.get("content")):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image":
                found = part.get("image", part.get("path"))
                if not isinstance(found, str) or not found.strip():
                    raise ValueError(f"{source}: an image part names no path ({part!r}); {JSONL_HELP}")
                images.append(part)
                part["image"] = str(folder / found)
                part.pop("path", None)
            elif kind != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"{source}: content part {part!r} is neither a text nor an image part; {JSONL_HELP}")
    if len(images) != 1:
        raise ValueError(f"{source}: {len(images)} image parts; one image per prompt is measured: {JSONL_HELP}")
    return ImagePrompt(images[0]["image"], None, json.dumps(messages), source=source)


def _check_opens(prompt: ImagePrompt) -> None:
    from PIL import Image, UnidentifiedImageError

    if not Path(prompt.image).is_file():
        raise ValueError(f"{prompt.source}: image {prompt.image}: no such file")
    try:
        with Image.open(prompt.image) as image:
            image.verify()
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise ValueError(f"{prompt.source}: image {prompt.image} cannot be read as an image ({error}); give a PNG, "
                         "JPEG, WebP, BMP or GIF file") from None


def render(prompt: ImagePrompt, processor) -> str:
    """The prompt's text as the processor takes it beside the image: the chat (or the question as a user turn with
    the image first) through the processor's chat template, else the image token, a newline and the question."""
    template = getattr(processor, "chat_template", None)
    if prompt.messages_json is not None:
        messages = json.loads(prompt.messages_json)
    else:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.question}]}]
    if template:
        for message in messages:
            message["content"] = [{"type": "image"} if p.get("type") == "image" else p for p in _parts(message["content"])]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    token = getattr(processor, "image_token", None) or "<image>"
    return f"{token}\n{prompt.text}"
