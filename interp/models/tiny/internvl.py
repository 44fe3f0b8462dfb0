"""Tiny random InternVL: InternViT-style tower, pixel-shuffle MLP projector + Qwen2 LM.

Images are cropped into a grid of square tiles whose aspect ratio best matches the
image (GotOcr2 image processor, up to 12 tiles) plus a thumbnail, as in the real
InternVL3 processors.
"""

from __future__ import annotations

from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor, Qwen2Config
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

from .common import TinySpec, finish
from ..processors import image_only_processor
from ..processors import token_id
from .tokenizer import byte_tokenizer, chat_template

MODEL_TYPE = "internvl"

DOWNSAMPLE_RATIO = 0.5


def build(spec: TinySpec):
    tokenizer = byte_tokenizer(
        start_image_token="<img>",
        end_image_token="</img>",
        context_image_token="<IMG_CONTEXT>",
        video_token="<video>",
        template=chat_template("<IMG_CONTEXT>\n"),
    )
    side = spec.image_size // spec.patch_size
    image_seq_length = int(side * DOWNSAMPLE_RATIO) ** 2
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size},
        crop_to_patches=True,
        min_patches=1,
        max_patches=12,
    )
    processor = image_only_processor(InternVLProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=image_seq_length,
        chat_template=tokenizer.chat_template,
    )
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(
            **spec.vit_kwargs(
                image_size=(spec.image_size, spec.image_size), patch_size=(spec.patch_size, spec.patch_size)
            ),
        ),
        text_config=Qwen2Config(**spec.llama_kwargs(len(tokenizer))),
        image_token_id=token_id(tokenizer, "<IMG_CONTEXT>"),
        image_seq_length=image_seq_length,
        downsample_ratio=DOWNSAMPLE_RATIO,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    return finish(InternVLForConditionalGeneration, config, processor, spec)
