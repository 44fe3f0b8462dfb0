"""Tiny random LLaVA-1.5: CLIP tower + Llama LM, built offline from config objects."""

from __future__ import annotations

from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from .common import TinySpec, finish
from ..processors import token_id
from .tokenizer import byte_tokenizer, chat_template

MODEL_TYPE = "llava"


def build(spec: TinySpec):
    tokenizer = byte_tokenizer(image_token="<image>", template=chat_template("<image>\n"))
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            **spec.vit_kwargs(),
        ),
        text_config=LlamaConfig(**spec.llama_kwargs(len(tokenizer))),
        image_token_index=token_id(tokenizer, "<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    return finish(LlavaForConditionalGeneration, config, processor, spec)
