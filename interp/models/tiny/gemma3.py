"""Tiny random Gemma 3: SigLIP tower, 2x2 average pooling, Gemma 3 text model.

The image is squashed to ``2 * image_size`` px (8x8 SigLIP patches at the default
spec), pooled to ``mm_tokens_per_image = 16`` tokens (4x4). Like the real model the
text layers mix sliding-window and full attention and image tokens attend to each
other bidirectionally (``token_type_ids``). The window is small (32 tokens) so the
sliding layers actually differ from the full ones at test-prompt lengths; every
other layer is full so a 4-layer model has both kinds. The projector matrix, which
HF initialises to zeros, gets random weights.
"""

from __future__ import annotations

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    SiglipVisionConfig,
)

from .common import TinySpec, finish
from .tokenizer import byte_tokenizer, chat_template

MODEL_TYPE = "gemma3"

POOL = 2
SLIDING_WINDOW = 32


def build(spec: TinySpec):
    image_size = 2 * spec.image_size
    tokens_per_side = image_size // spec.patch_size // POOL
    mm_tokens = tokens_per_side**2
    tokenizer = byte_tokenizer(
        image_token="<image_soft_token>",
        boi_token="<start_of_image>",
        eoi_token="<end_of_image>",
        template=chat_template("<start_of_image>", bos="<s>"),
    )
    image_processor = Gemma3ImageProcessorPil(
        size={"height": image_size, "width": image_size},
        do_pan_and_scan=False,
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
        image_seq_length=mm_tokens,
    )
    head_dim = spec.text_hidden // spec.text_heads
    kwargs = spec.llama_kwargs(len(tokenizer))
    text = Gemma3TextConfig(
        **kwargs,
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        sliding_window=SLIDING_WINDOW,
        layer_types=["full_attention" if (i + 1) % 2 == 0 else "sliding_attention" for i in range(spec.text_layers)],
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=SiglipVisionConfig(
            **spec.vit_kwargs(image_size=image_size),
            vision_use_head=False,
        ),
        mm_tokens_per_image=mm_tokens,
        image_token_index=tokenizer.image_token_id,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
    )
    model, processor = finish(Gemma3ForConditionalGeneration, config, processor, spec)
    # HF initialises the projector matrix to zeros (a real checkpoint overwrites it),
    # which would make every image token identical: give it random weights instead.
    weight = model.model.multi_modal_projector.mm_input_projection_weight
    generator = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        scale = config.initializer_range
        assert scale is not None  # Gemma3Config always sets it
        weight.copy_(torch.randn(weight.shape, generator=generator) * scale)
    return model, processor
