"""Tiny random Qwen2-VL: NaViT-style tower with 2x2 patch merger + Qwen2 LM with M-RoPE.

Also holds the pieces the other Qwen-VL builders share: the tokenizer with the
Qwen vision specials and the image processor.
"""

from __future__ import annotations

from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from ..processors import image_only_processor
from .common import TinySpec, finish
from .tokenizer import byte_tokenizer, chat_template

MODEL_TYPE = "qwen2_vl"

MERGE = 2


def qwen_tokenizer():
    """Byte tokenizer with the Qwen vision specials; images are ``<|vision_start|><|image_pad|><|vision_end|>``."""
    return byte_tokenizer(
        ["<|vision_start|>", "<|vision_end|>"],
        image_token="<|image_pad|>",
        video_token="<|video_pad|>",
        template=chat_template("<|vision_start|><|image_pad|><|vision_end|>"),
    )


def qwen_image_processor(spec: TinySpec, **kwargs) -> Qwen2VLImageProcessorPil:
    """Smart-resize to multiples of patch*merge; at least 2x2 and at most (4*image_size)^2 pixels."""
    factor = spec.patch_size * MERGE
    return Qwen2VLImageProcessorPil(
        patch_size=spec.patch_size,
        merge_size=MERGE,
        temporal_patch_size=2,
        size={"shortest_edge": 4 * factor * factor, "longest_edge": (4 * spec.image_size) ** 2},
        **kwargs,
    )


def mrope_section(head_dim: int) -> list[int]:
    """(temporal, height, width) split of the rotary half-dim, in the real models' 1:1.5:1.5 ratio."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def build(spec: TinySpec):
    tokenizer = qwen_tokenizer()
    processor = image_only_processor(Qwen2VLProcessor)(
        image_processor=qwen_image_processor(spec), tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )
    head_dim = spec.text_hidden // spec.text_heads
    config = Qwen2VLConfig(
        vision_config=Qwen2VLVisionConfig(
            depth=spec.vision_layers,
            embed_dim=spec.vision_hidden,
            hidden_size=spec.text_hidden,
            mlp_ratio=2,
            num_heads=2,
            patch_size=spec.patch_size,
            spatial_merge_size=MERGE,
            temporal_patch_size=2,
        ),
        text_config=Qwen2VLTextConfig(
            **spec.llama_kwargs(len(tokenizer)),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section(head_dim)},
        ),
        **token_ids(tokenizer),
    )
    return finish(Qwen2VLForConditionalGeneration, config, processor, spec)
