"""Tiny random Mistral-3 (Mistral-Small-3.1 style): Pixtral tower + 2x2 patch merger + Mistral LM.

Pixtral patches are 4 px, merged 2x2, so one image token covers 8x8 px: a 48x64
image (longest edge <= 64) becomes a 6x8 token grid.
"""

from __future__ import annotations

import importlib
import sys
import types

from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    MistralConfig,
    PixtralImageProcessorPil,
    PixtralVisionConfig,
)

from .common import TinySpec, finish
from ..processors import token_id
from .tokenizer import byte_tokenizer, chat_template

MODEL_TYPE = "mistral3"

MERGE = 2


def pixtral_processor_class():
    """HF's ``PixtralProcessor`` (the processor of ``mistral3``), also without torchvision.

    ``processing_pixtral`` imports one size helper from the torchvision image-processor
    module, which fails to import without torchvision. The PIL module defines the same
    helper, so while importing the processor module that name is served from there;
    the stand-in is removed right after, so nothing else sees it.
    """
    name = "transformers.models.pixtral.processing_pixtral"
    try:
        return importlib.import_module(name).PixtralProcessor
    except ImportError:
        pass
    from transformers.models.pixtral import image_processing_pil_pixtral

    helper = "transformers.models.pixtral.image_processing_pixtral"
    stand_in = types.ModuleType(helper)
    stand_in.get_resize_output_image_size = image_processing_pil_pixtral.get_resize_output_image_size
    sys.modules.pop(name, None)
    sys.modules[helper] = stand_in
    try:
        return importlib.import_module(name).PixtralProcessor
    finally:
        if sys.modules.get(helper) is stand_in:
            del sys.modules[helper]


def build(spec: TinySpec):
    patch = max(1, spec.patch_size // MERGE)
    longest = 2 * spec.image_size
    specials = ("[IMG]", "[IMG_BREAK]", "[IMG_END]")
    tokenizer = byte_tokenizer(specials, image_token="[IMG]", template=chat_template("[IMG]"))
    image_processor = PixtralImageProcessorPil(
        size={"longest_edge": longest},
        patch_size={"height": patch, "width": patch},
    )
    processor = pixtral_processor_class()(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        spatial_merge_size=MERGE,
        image_token="[IMG]",
        image_break_token="[IMG_BREAK]",
        image_end_token="[IMG_END]",
        chat_template=tokenizer.chat_template,
    )
    text = MistralConfig(**spec.llama_kwargs(len(tokenizer)))
    text.sliding_window = None  # as in Mistral-Small-3.1
    text.head_dim = spec.text_hidden // spec.text_heads
    config = Mistral3Config(
        vision_config=PixtralVisionConfig(  # type: ignore[call-arg]  # head_dim goes through **kwargs
            **spec.vit_kwargs(image_size=longest, patch_size=patch),
            head_dim=spec.vision_hidden // 2,
        ),
        text_config=text,
        image_token_index=token_id(tokenizer, "[IMG]"),
        spatial_merge_size=MERGE,
        vision_feature_layer=-1,
    )
    return finish(Mistral3ForConditionalGeneration, config, processor, spec)
