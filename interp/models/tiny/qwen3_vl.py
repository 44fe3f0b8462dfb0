"""Tiny random Qwen3-VL: tower with learned position grid, 2x2 merger and DeepStack + Qwen3 LM."""

from __future__ import annotations

from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig, Qwen3VLVisionConfig

from .common import TinySpec, finish
from ..processors import image_only_processor
from .qwen2_vl import MERGE, mrope_section, qwen_image_processor, qwen_tokenizer, token_ids

MODEL_TYPE = "qwen3_vl"


def build(spec: TinySpec):
    tokenizer = qwen_tokenizer()
    image_processor = qwen_image_processor(spec, image_mean=IMAGENET_STANDARD_MEAN, image_std=IMAGENET_STANDARD_STD)
    processor = image_only_processor(Qwen3VLProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )
    head_dim = spec.text_hidden // spec.text_heads
    depth = spec.vision_layers
    config = Qwen3VLConfig(
        vision_config=Qwen3VLVisionConfig(
            depth=depth,
            hidden_size=spec.vision_hidden,
            intermediate_size=2 * spec.vision_hidden,
            num_heads=2,
            patch_size=spec.patch_size,
            spatial_merge_size=MERGE,
            temporal_patch_size=2,
            out_hidden_size=spec.text_hidden,
            # learned 8x8 position grid, bilinearly resampled to each image's patch grid
            num_position_embeddings=64,
            # DeepStack: features of up to three tower blocks are added to the image
            # tokens' residual stream after the first LM layers
            deepstack_visual_indexes=list(range(depth))[-3:],
        ),
        text_config=Qwen3VLTextConfig(
            **spec.llama_kwargs(len(tokenizer)),
            head_dim=head_dim,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": mrope_section(head_dim),
                "mrope_interleaved": True,
            },
        ),
        **token_ids(tokenizer),
    )
    return finish(Qwen3VLForConditionalGeneration, config, processor, spec)
