"""Image-text-to-text models built from a config, with random weights, for tests and benchmarks: a SigLIP vision
tower, LLaVA's two-layer projector and a Llama, saved with a processor (the embedded model's tokenizer plus an
``<image>`` token, a SigLIP image processor and a chat template). Nothing is downloaded.

Random weights make quality figures meaningless (KL between random models says nothing of a real one); the
loading paths, the memory and the speed are real.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_TOKEN = "<image>"
# Renders image parts as the image token and text parts as they are: "user: <image>What is in this picture?\n"
CHAT_TEMPLATE = ("{% for message in messages %}{{ message['role'] }}: {% if message['content'] is string %}"
                 "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
                 "<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}\n"
                 "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
# (vision tower, language model) per shape; "user": a SigLIP-so400m-like tower (27 layers, 729 image tokens) and a
# 1.3B Llama (22 layers of 2048, grouped-query attention), the size of the small open VLMs.
SHAPES = {
    # linear layers hold most of its weights, as in a real model (a smaller one is mostly embeddings, which stay float)
    "tiny": (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8),
             dict(hidden_size=256, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=4,
                  num_key_value_heads=4, head_dim=64)),
    "user": (dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                  image_size=384, patch_size=14),
             dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=22, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=64)),
}
# The projector and the head under transformers' skip-list matching (from the start of a module's name, or its end)
SKIP_PROJECTOR_AND_HEAD = ("model.multi_modal_projector", "lm_head")


def build_vlm(folder: Path, shape: str = "tiny", seed: int = 0, dtype: str = "float32") -> Path:
    """Write a LlavaForConditionalGeneration of ``shape`` (``SHAPES``) with its processor into ``folder``."""
    import torch
    from transformers import (AutoTokenizer, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                              SiglipImageProcessor, SiglipVisionConfig)

    from . import TINY_DIR

    if shape not in SHAPES:
        raise ValueError(f"shape {shape!r}: accepted {', '.join(SHAPES)}")
    vision_shape, text_shape = SHAPES[shape]
    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    text = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       tie_word_embeddings=shape == "tiny", **text_shape)
    config = LlavaConfig(vision_config=SiglipVisionConfig(vision_use_head=False, **vision_shape), text_config=text,
                         image_token_id=image_token_id, vision_feature_layer=-1, vision_feature_select_strategy="full",
                         projector_hidden_act="gelu")
    torch.manual_seed(seed)
    with torch.device("cuda" if shape != "tiny" and torch.cuda.is_available() else "cpu"):
        model = LlavaForConditionalGeneration(config).to(getattr(torch, dtype))
    side = vision_shape["image_size"]
    processor = LlavaProcessor(
        image_processor=SiglipImageProcessor(size={"height": side, "width": side}),
        tokenizer=tokenizer, patch_size=vision_shape["patch_size"], vision_feature_select_strategy="full",
        num_additional_image_tokens=0, chat_template=CHAT_TEMPLATE)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    del model
    return folder
