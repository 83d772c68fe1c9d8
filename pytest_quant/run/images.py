"""Image-text-to-text models in a session: which recipes can load them, and the image prompts as the measurer uses
them (the prompts' tokens and image inputs on the model's device; the reference's answers scored by every model;
generations and the decode prompt with the image in the prefill)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..models import ModelSource
from ..models.vision import is_image_text_to_text
from .live import LiveModel

ANSWER_TOKENS = 32  # the reference's greedy answer to each image prompt: the tokens KL and perplexity are taken over
VISION_BACKENDS_HINT = "reference, bitsandbytes, torchao and gptqmodel recipes gate it"


def vision_reason(pair, backend, is_vision: bool) -> str | None:
    """Why a recipe cannot gate an image-text-to-text model (None: it can, or the model is a text model)."""
    if not is_vision:
        return None
    if not getattr(backend, "vision_language", False):
        return (f"recipe {pair.recipe.name}: backend {backend.name} loads causal language models only; "
                f"{pair.model.name} is an image-text-to-text model ({VISION_BACKENDS_HINT})")
    if pair.recipe.kv_cache is not None:
        return (f"recipe {pair.recipe.name}: a quantized KV cache is measured on the eval text by decoding; "
                f"{pair.model.name} is an image-text-to-text model, measured on image prompts ({VISION_BACKENDS_HINT})")
    return None


class ImageInputs:
    """The image prompts (read once) and each model's processor (loaded once)."""

    def __init__(self, images_path: Path | None, trust_remote_code: bool = False):
        self._path = images_path
        self._trust_remote_code = trust_remote_code
        self._prompts = None
        self._processors: dict[str, Any] = {}

    def prompts(self):
        """--quant-images, else the embedded drawings (``images.default_images``)."""
        from ..images import default_images, read_images

        if self._prompts is None:
            self._prompts = read_images(self._path) if self._path is not None else default_images()
        return self._prompts

    @property
    def name(self) -> str:
        return str(self._path) if self._path is not None else "the embedded drawings"

    def processor(self, model: ModelSource):
        """The model folder's processor (tokenizer, image processor, chat template), ``trust_remote_code`` explicit."""
        if model.name not in self._processors:
            from transformers import AutoProcessor

            self._processors[model.name] = AutoProcessor.from_pretrained(model.path,
                                                                         trust_remote_code=self._trust_remote_code)
        return self._processors[model.name]


@dataclass(frozen=True)
class ImageBatch:
    """Every image prompt rendered for one live model: token ids (image tokens expanded) and image inputs."""

    prompt_ids: tuple[tuple[int, ...], ...]
    image_inputs: tuple[dict[str, Any], ...]  # pixel_values (and what else the processor gives), on the device
    displays: tuple[str, ...]


def prepare(live: LiveModel, inputs: ImageInputs) -> ImageBatch:
    from ..images import open_image, render

    processor = inputs.processor(live.pair.model)
    device, dtype = live.model.device, live.model.dtype
    ids, images, displays = [], [], []
    for prompt in inputs.prompts():
        encoded = processor(images=[open_image(prompt)], text=render(prompt, processor), return_tensors="pt")
        ids.append(tuple(int(t) for t in encoded["input_ids"][0]))
        images.append({k: v.to(device, dtype) if v.is_floating_point() else v.to(device)
                       for k, v in encoded.items() if k not in ("input_ids", "attention_mask")})
        displays.append(prompt.display)
    return ImageBatch(tuple(ids), tuple(images), tuple(displays))


def generate(live: LiveModel, batch: ImageBatch, tokens: int):
    """Greedy answers to every image prompt (the image in each prefill): one ``Generations``, their total time."""
    from ..measure.generation import Generations, greedy_generate
    from ..measure.vision import ImagePrefill

    answers, seconds = [], 0.0
    for ids, image in zip(batch.prompt_ids, batch.image_inputs):
        one = greedy_generate(ImagePrefill(live.model, image), live.tokenizer, [ids], tokens)
        answers.append(one.token_ids[0])
        seconds += one.seconds
    return Generations(tuple(answers), seconds)


def answer_all(live: LiveModel, inputs: ImageInputs, tokens: int, progress: Callable[[str], None]):
    """The image prompts as reports show them, and the model's greedy answers to them (``Generations``)."""
    batch = prepare(live, inputs)
    progress(f"{live.pair.id}: answering {len(batch.displays)} image prompts greedily, {tokens} tokens each")
    return batch.displays, generate(live, batch, tokens)


def scored(live: LiveModel, text_inputs, inputs: ImageInputs, reference, progress: Callable[[str], None]):
    """What ``quality.evaluate`` scores: ``(windows, window_inputs, answers)``. A text model's eval windows; an
    image-text-to-text model's, the reference's answers to the image prompts (generated now by the reference
    itself, left by it for a variant), each window with its image's inputs, and the answers kept for the variants."""
    from ..measure.vision import answer_windows, stacked_inputs

    if not is_image_text_to_text(live.pair.model.path):
        return text_inputs.windows(live.pair.model, live.tokenizer), None, None
    batch = prepare(live, inputs)
    if live.pair.recipe.is_reference:
        progress(f"{live.pair.id}: answering {len(batch.prompt_ids)} image prompts ({ANSWER_TOKENS} tokens each), "
                 "the answers every variant is scored on")
        answered = answer_windows(batch.prompt_ids, generate(live, batch, ANSWER_TOKENS).token_ids, inputs.name)
    else:
        answered = None if reference is None else reference.answers
        if answered is None:
            raise RuntimeError(f"pytest-quant: the reference of {live.pair.model.name} left no answers to its image "
                               "prompts this session; its variants' KL cannot be measured")
    return answered.windows, stacked_inputs(list(batch.image_inputs)), answered


def decode_prompt(live: LiveModel, inputs: ImageInputs):
    """The first image prompt's tokens and the model with its image in every prefill, for decode timing."""
    from ..measure.vision import ImagePrefill

    batch = prepare(live, inputs)
    return list(batch.prompt_ids[0]), ImagePrefill(live.model, batch.image_inputs[0])
