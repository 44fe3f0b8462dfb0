"""Tiny random Qwen2.5-VL: windowed-attention tower with 2x2 patch merger + Qwen2 LM with M-RoPE."""

from __future__ import annotations

from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig, Qwen2_5_VLVisionConfig

from .common import TinySpec, finish
from ..processors import image_only_processor
from .qwen2_vl import MERGE, mrope_section, qwen_image_processor, qwen_tokenizer, token_ids

MODEL_TYPE = "qwen2_5_vl"


def build(spec: TinySpec):
    tokenizer = qwen_tokenizer()
    processor = image_only_processor(Qwen2_5_VLProcessor)(
        image_processor=qwen_image_processor(spec), tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )
    head_dim = spec.text_hidden // spec.text_heads
    config = Qwen2_5_VLConfig(
        vision_config=Qwen2_5_VLVisionConfig(
            depth=spec.vision_layers,
            hidden_size=spec.vision_hidden,
            intermediate_size=2 * spec.vision_hidden,
            num_heads=2,
            patch_size=spec.patch_size,
            spatial_merge_size=MERGE,
            temporal_patch_size=2,
            out_hidden_size=spec.text_hidden,
            # windows of 2x2 merged tokens (the real model: 112 px = 4x4 merged 14 px patches)
            window_size=2 * MERGE * spec.patch_size,
            # like the real tower, some blocks attend globally: every second one here
            fullatt_block_indexes=[i for i in range(spec.vision_layers) if i % 2 == 1],
        ),
        text_config=Qwen2_5_VLTextConfig(
            **spec.llama_kwargs(len(tokenizer)),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section(head_dim)},
        ),
        **token_ids(tokenizer),
    )
    return finish(Qwen2_5_VLForConditionalGeneration, config, processor, spec)
