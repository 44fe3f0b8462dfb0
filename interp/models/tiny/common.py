"""Shared sizes and the final build step for tiny random family models."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class TinySpec:
    """Sizes of a tiny test model. Small enough that a forward takes milliseconds."""

    seed: int = 0
    attn_implementation: str = "eager"
    text_layers: int = 4
    text_hidden: int = 64
    text_heads: int = 4
    text_kv_heads: int = 2
    vision_layers: int = 1
    vision_hidden: int = 32
    image_size: int = 32
    patch_size: int = 8
    dtype: torch.dtype = torch.float32

    def with_(self, **changes) -> TinySpec:
        return replace(self, **changes)

    def vit_kwargs(self, image_size=None, patch_size=None) -> dict:
        """Kwargs shared by the CLIP/SigLIP/Pixtral/InternViT-style vision configs."""
        return dict(
            hidden_size=self.vision_hidden,
            intermediate_size=2 * self.vision_hidden,
            num_hidden_layers=self.vision_layers,
            num_attention_heads=2,
            image_size=self.image_size if image_size is None else image_size,
            patch_size=self.patch_size if patch_size is None else patch_size,
        )

    def llama_kwargs(self, vocab_size: int) -> dict:
        """Kwargs shared by the Llama/Mistral/Qwen2-style text configs."""
        return dict(
            vocab_size=vocab_size,
            hidden_size=self.text_hidden,
            intermediate_size=2 * self.text_hidden,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads,
            num_key_value_heads=self.text_kv_heads,
            max_position_embeddings=1024,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )


def finish(model_class, config, processor, spec: TinySpec):
    """Seeded random init, eval mode, the requested attention implementation."""
    config._attn_implementation = spec.attn_implementation
    torch.manual_seed(spec.seed)
    model = model_class(config).to(spec.dtype).eval()
    model.config._attn_implementation = spec.attn_implementation
    return model, processor
