"""Whether a model folder holds an image-text-to-text model (a vision tower, a projector and a language model),
and which transformers Auto class loads it; read from config.json without torch."""

from __future__ import annotations

from pathlib import Path

# The Auto class of a model whose config declares a vision tower; a remote-code model whose auto_map offers only
# AutoModel (MiniCPM-V) is loaded with that, as its own README does.
IMAGE_TEXT_AUTO = "AutoModelForImageTextToText"
CAUSAL_AUTO = "AutoModelForCausalLM"


def vision_config_of(config: dict) -> dict | None:
    """The config's vision tower section (``vision_config``), None for a text model."""
    vision = config.get("vision_config")
    return vision if isinstance(vision, dict) and vision else None


def is_image_text_to_text(model_path: Path) -> bool:
    """Whether the folder's config.json declares a vision tower (LLaVA, Qwen2-VL, Gemma 3, MiniCPM-V, ...). A GGUF
    file or a folder without a readable config is a text model here (its own checks report it)."""
    from . import is_gguf_file, read_config

    if is_gguf_file(model_path):
        return False
    try:
        return vision_config_of(read_config(model_path)) is not None
    except ValueError:
        return False


def auto_class_name(config: dict) -> str:
    """The transformers Auto class that loads a model of this config."""
    if vision_config_of(config) is None:
        return CAUSAL_AUTO
    mapped = config.get("auto_map") if isinstance(config.get("auto_map"), dict) else {}
    if mapped and IMAGE_TEXT_AUTO not in mapped and "AutoModel" in mapped:
        return "AutoModel"
    return IMAGE_TEXT_AUTO


def architecture(config: dict) -> str:
    """The model's class name as config.json declares it (its model_type where it declares none)."""
    names = config.get("architectures")
    if isinstance(names, list) and names and isinstance(names[0], str):
        return names[0]
    return str(config.get("model_type") or "unknown")


def images_problem(path: Path, models) -> str | None:
    """Why ``--quant-images`` cannot serve these models (None: it can): no model takes images, or a chat prompt for
    a model without a chat template."""
    from ..images import read_images
    from . import has_chat_template

    vision = [m for m in models if is_image_text_to_text(m.path)]
    if not vision:
        names = ", ".join(m.name for m in models)
        return (f"--quant-images {path}: none of the models takes images ({names}: no vision_config in config.json); "
                "give an image-text-to-text model folder as --quant-model, or drop --quant-images")
    try:
        prompts = read_images(path)
    except ValueError as exc:
        return f"--quant-images {path}: {exc}"
    chat = next((p for p in prompts if p.messages_json is not None), None)
    for model in vision:
        if chat is not None and not has_chat_template(model.path):
            return (f"--quant-images {chat.source}: a chat prompt, and {model.name} has no chat template to render it "
                    "(chat_template.jinja or tokenizer_config.json's chat_template); give it as {\"image\", \"prompt\"}")
    return None
