"""Tiny random LLaVA-NeXT: CLIP tower (4x4 patches per 32 px tile) + Llama LM.

Grid pinpoints are multiples of the tile size, so a 48x64 image is tiled 2x2 and its
unpadded high-resolution grid is 6x8 next to the 4x4 base grid.
"""

from __future__ import annotations

from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
)

from .common import TinySpec, finish
from ..processors import token_id
from .tokenizer import byte_tokenizer, chat_template

MODEL_TYPE = "llava_next"


def pinpoints(tile: int) -> list[list[int]]:
    return [[tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile], [tile, 3 * tile], [3 * tile, tile]]


def build(spec: TinySpec):
    tile = spec.image_size
    grid_pinpoints = pinpoints(tile)
    tokenizer = byte_tokenizer(image_token="<image>", template=chat_template("<image>\n"))
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": tile},
        crop_size={"height": tile, "width": tile},
        image_grid_pinpoints=grid_pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            **spec.vit_kwargs(image_size=tile),
        ),
        text_config=LlamaConfig(**spec.llama_kwargs(len(tokenizer))),
        image_token_index=token_id(tokenizer, "<image>"),
        image_grid_pinpoints=grid_pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    return finish(LlavaNextForConditionalGeneration, config, processor, spec)
