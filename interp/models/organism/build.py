"""Assemble the organism: a genuine HF ``LlavaForConditionalGeneration``.

Vision tower: a small CLIP ViT (trained by us); projector: LLaVA's two-layer MLP;
language model: the pretrained SmolLM2-135M-Instruct, with its attention projections
adapted in the full variant. The processor is a real ``LlavaProcessor`` (CLIP image
processor + SmolLM2's tokenizer with an ``<image>`` token), so the organism saves as an
ordinary HF model directory and loads through the same path as
``llava-hf/llava-1.5-7b-hf``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..processors import token_id
from .smollm2 import CHAT_TEMPLATE, smollm2_dir

IMAGE_TOKEN = "<image>"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class TowerSpec:
    """The organism's vision tower. ``image_size / patch_size`` is the patch grid side."""

    image_size: int = 96
    patch_size: int = 16
    hidden_size: int = 192
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 384

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)


def vision_config(spec: TowerSpec):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
    )


def build_processor(spec: TowerSpec):
    from transformers import AutoTokenizer, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.chat_template = CHAT_TEMPLATE
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


def build_organism(spec: TowerSpec = TowerSpec(), *, seed: int = 0, attn_implementation: str = "sdpa"):
    """``(model, processor)``: SmolLM2 weights in the LM, a freshly initialised tower and
    projector (seeded). Training replaces the tower, projector and attention weights."""
    from transformers import AutoModelForCausalLM, LlavaConfig, LlavaForConditionalGeneration

    processor = build_processor(spec)
    tokenizer = processor.tokenizer
    lm = AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=torch.float32)
    text_config = lm.config
    config = LlavaConfig(
        vision_config=vision_config(spec),
        text_config=text_config,
        image_token_index=token_id(tokenizer, IMAGE_TOKEN),
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=text_config.tie_word_embeddings,
    )
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(
        {k.removeprefix("model."): v for k, v in lm.state_dict().items() if k.startswith("model.")}, strict=True
    )
    # one new vocabulary row for <image>: the mean embedding (deterministic); its
    # position is overwritten by image features, and generation never emits it
    old = lm.model.embed_tokens.weight.data
    new_size = len(tokenizer)
    resized = torch.empty(new_size, old.shape[1])
    resized[: old.shape[0]] = old
    resized[old.shape[0] :] = old.mean(dim=0)
    model.resize_token_embeddings(new_size, mean_resizing=False)
    model.model.language_model.embed_tokens.weight.data.copy_(resized)
    if not text_config.tie_word_embeddings:
        model.lm_head.weight.data[: old.shape[0]] = lm.lm_head.weight.data
    model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.suppress_tokens = [config.image_token_id]
    model.generation_config.do_sample = False
    model.eval()
    return model, processor


ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def trainable_state(model, *, with_attention: bool) -> dict[str, torch.Tensor]:
    """The weights training changes: tower, projector, <image> row, and (full variant)
    the LM's attention projections. Everything else is SmolLM2's own."""
    state = {}
    for name, tensor in model.state_dict().items():
        if (
            name.startswith(("model.vision_tower.", "model.multi_modal_projector."))
            or with_attention
            and ".self_attn." in name
            and name.split(".")[-2] in ATTENTION_PROJECTIONS
        ):
            state[name] = tensor
    image_row = model.config.image_token_id
    state["image_token_embedding"] = model.model.language_model.embed_tokens.weight[image_row : image_row + 1]
    return {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in state.items()}  # cpu: for the file


def apply_trained_state(model, state: dict[str, torch.Tensor]) -> None:
    """Load shipped weights (fp16) into an organism built by :func:`build_organism`."""
    state = dict(state)
    row = state.pop("image_token_embedding", None)
    current = model.state_dict()
    unknown = [k for k in state if k not in current]
    if unknown:
        raise KeyError(f"organism weights hold unknown tensors: {unknown[:3]}")
    model.load_state_dict({k: v.to(current[k].dtype) for k, v in state.items()}, strict=False)
    if row is not None:
        image_row = model.config.image_token_id
        model.model.language_model.embed_tokens.weight.data[image_row] = row[0].to(torch.float32)
