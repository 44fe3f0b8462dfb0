"""Tiny random PaliGemma: SigLIP tower (4x4 patches at 32 px) + Gemma LM, prefix-LM attention.

Like the real processor it has no chat template (prompts are ``<image>...<bos>text\\n``)
and adds the ``<locXXXX>``/``<segXXX>`` tokens to the tokenizer. ``token_type_ids`` (0 on
the prefix: image and prompt) make the prefix attend bidirectionally.
"""

from __future__ import annotations

from transformers import (
    GemmaConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)

from .common import TinySpec, finish
from ..processors import token_id
from .tokenizer import byte_tokenizer

MODEL_TYPE = "paligemma"


def build(spec: TinySpec):
    side = spec.image_size // spec.patch_size
    tokenizer = byte_tokenizer(image_token="<image>")
    image_processor = SiglipImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size},
        image_seq_length=side * side,
    )
    # The processor adds the location/segmentation tokens: size the vocabulary after it.
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    text = GemmaConfig(**spec.llama_kwargs(len(tokenizer)), head_dim=spec.text_hidden // spec.text_heads)
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(
            **spec.vit_kwargs(),
            vision_use_head=False,
        ),
        text_config=text,
        image_token_index=token_id(tokenizer, "<image>"),
        vocab_size=len(tokenizer),
        projection_dim=spec.text_hidden,
        hidden_size=spec.text_hidden,
    )
    return finish(PaliGemmaForConditionalGeneration, config, processor, spec)
