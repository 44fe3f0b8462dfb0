"""The benchmarked models and prompts.

* :class:`WideSpec` / :func:`build_wide`: a random LLaVA-1.5-architecture model built offline
  from config objects (CLIP tower, Llama LM; default 8 layers x hidden 1024 x 16 heads, vocab
  32000, a 24x24 patch grid = 576 image tokens plus ~470 text tokens: 1050 tokens), for the
  attention benchmark; :data:`QUICK_WIDE` is its seconds-long stand-in.
* :func:`organism_vlm`: the organism architecture (``build_organism(TowerSpec(), seed=0)``: the
  real SmolLM2-135M LM and a small CLIP tower, untrained vision weights: fine for timing), or
  ``tiny:llava`` for ``--quick``, with an un-instrumented copy; :func:`organism_prompt`: a real
  organism prompt (``SyntheticVQA('test', seed=0)``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WideSpec:
    """The random LLaVA-1.5-architecture model of the attention benchmark.

    ``text_chars`` question characters (the byte-level tokenizer makes one token of each)
    follow ``(image_size / patch_size)**2`` image tokens.
    """

    hidden: int = 1024
    layers: int = 8
    heads: int = 16
    kv_heads: int = 16
    intermediate: int = 2816
    vocab: int = 32000
    image_size: int = 96
    patch_size: int = 4
    vision_hidden: int = 128
    vision_layers: int = 1
    text_chars: int = 450
    seed: int = 0


FULL_WIDE = WideSpec()
QUICK_WIDE = WideSpec(
    hidden=64,
    layers=2,
    heads=4,
    kv_heads=2,
    intermediate=128,
    vocab=512,
    image_size=32,
    patch_size=8,
    vision_hidden=32,
    text_chars=48,
)


def wide_processor(spec: WideSpec):
    from transformers import CLIPImageProcessor, LlavaProcessor

    from interp.models.tiny.tokenizer import byte_tokenizer, chat_template

    tokenizer = byte_tokenizer(image_token="<image>", template=chat_template("<image>\n"))
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )


def build_wide(spec: WideSpec, attn_implementation: str = "sdpa"):
    """``(model, processor)``: a seeded random LLaVA-1.5-architecture model of ``spec``'s size,
    built from config objects through the public HF classes (as ``interp.models.tiny`` does)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    processor = wide_processor(spec)
    tokenizer = processor.tokenizer
    if len(tokenizer) > spec.vocab:
        raise ValueError(f"vocab {spec.vocab} is smaller than the tokenizer ({len(tokenizer)})")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=spec.vision_hidden,
            intermediate_size=2 * spec.vision_hidden,
            num_hidden_layers=spec.vision_layers,
            num_attention_heads=2,
            image_size=spec.image_size,
            patch_size=spec.patch_size,
        ),
        text_config=LlamaConfig(
            vocab_size=spec.vocab,
            hidden_size=spec.hidden,
            intermediate_size=spec.intermediate,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            num_key_value_heads=spec.kv_heads,
            max_position_embeddings=4096,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    config._attn_implementation = attn_implementation
    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.set_attn_implementation(attn_implementation)
    return model, processor


def wide_image(spec: WideSpec):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(spec.seed)
    return Image.fromarray((rng.uniform(0, 1, (spec.image_size, spec.image_size, 3)) * 255).astype("uint8"))


def wide_question(spec: WideSpec) -> str:
    text = "Describe every object in the picture, its colour, its shape and where it is. "
    return (text * (spec.text_chars // len(text) + 1))[: spec.text_chars].strip() + "?"


def wide_prepared(model, processor, spec: WideSpec):
    """The benchmark prompt through interp's own input path (image positions, grid)."""
    from interp.inputs import prepare
    from interp.models.adapters import adapter_for

    return prepare(
        processor,
        adapter_for(model.config),
        model.config,
        wide_image(spec),
        wide_question(spec),
        dtype=next(model.parameters()).dtype,
    )


def organism_vlm(quick: bool):
    """``(vlm, pristine_model, label)``: the organism architecture (quick: a tiny LLaVA), wrapped
    for interp, and an un-instrumented deep copy of the same weights for plain forwards."""
    import interp

    if quick:
        from interp.models.tiny import build_tiny

        model, processor = build_tiny("llava", attn_implementation="sdpa")
        label = "tiny:llava (quick stand-in for the organism)"
    else:
        from interp.models.organism.build import TowerSpec, build_organism

        model, processor = build_organism(TowerSpec(), seed=0)
        label = "organism architecture: build_organism(TowerSpec(), seed=0) (SmolLM2-135M LM, untrained tower)"
    pristine = copy.deepcopy(model)
    return interp.load(model, processor), pristine, label


def organism_samples(n: int):
    """The first ``n`` samples of ``SyntheticVQA('test', seed=0)``."""
    from interp.data.synthetic import SyntheticVQA

    data = SyntheticVQA("test", seed=0)
    return [data[i] for i in range(n)]


def organism_prompt(vlm, index: int = 0):
    """``(sample, prepared)``: sample ``index`` of the organism's test set, prepared for ``vlm``."""
    from interp.data.synthetic import SyntheticVQA

    sample = SyntheticVQA("test", seed=0)[index]
    return sample, vlm.prepare(sample.image, sample.question)
