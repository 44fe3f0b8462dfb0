"""Assemble the Qwen2-VL organism: a genuine HF ``Qwen2VLForConditionalGeneration``.

Same language model as the LLaVA organism (SmolLM2-135M-Instruct), a different VLM
architecture around it:

* **LM**: SmolLM2's Llama weights mapped into Qwen2 (``Qwen2VLTextModel``) with *zero*
  q/k/v biases. Qwen2 is Llama plus those biases, with M-RoPE: with all three M-RoPE
  position components equal (text-only input) it computes exactly what SmolLM2's
  ``LlamaForCausalLM`` computes (:func:`text_model_matches_smollm2` checks it). Image
  tokens get Qwen's (temporal, row, column) positions.
* **Vision tower**: Qwen2-VL's own 2-D-RoPE ViT (small, trained by us) and its 2x2
  patch merger (the projector) onto SmolLM2's 576-d residual stream.
* **Processor**: a real ``Qwen2VLProcessor`` (dynamic resolution: a 96 px scene is a
  12x12 patch grid merged to 6x6 LM tokens; a 128 px scene 16x16 merged to 8x8)
  with SmolLM2's tokenizer plus Qwen's vision specials.

Training adapts the LM's attention, with LoRA or in full (plus the q/k/v biases Qwen2 has
and Llama lacks); either way the change is held apart from SmolLM2's weights, so the
shipped file holds only the tower, the merger, four embedding rows, the biases and the
change (low-rank factors, or int8 codes of the full difference);
:func:`apply_trained_state` merges them into an ordinary checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .smollm2 import smollm2_dir
from .weight_deltas import adapter_state, merge_adapter_parts, pop_adapter_parts

VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
SPECIAL_TOKENS = (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)
MERGE = 2
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# SmolLM2's chat format (as the LLaVA organism's), an image written the Qwen way
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
BIASED = ("q_proj", "k_proj", "v_proj")


@dataclass(frozen=True)
class QwenTowerSpec:
    """The Qwen organism's vision tower. ``image_size / (patch_size * 2)`` is the LM-token grid side."""

    image_size: int = 96
    patch_size: int = 8
    embed_dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 2

    @property
    def grid(self) -> int:
        """Side of the merged (LM-token) grid of an ``image_size`` scene."""
        return self.image_size // (self.patch_size * MERGE)

    def to_dict(self) -> dict:
        return asdict(self)


def mrope_section(head_dim: int) -> list[int]:
    """(temporal, row, column) split of the rotary half-dim, in Qwen2-VL's 16:24:24 ratio."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def text_config_from_llama(llama_config, vocab_size: int):
    """The ``Qwen2VLTextConfig`` that computes what ``llama_config`` computes (zero biases)."""
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig

    head_dim = llama_config.hidden_size // llama_config.num_attention_heads
    rope = dict(getattr(llama_config, "rope_parameters", None) or {})
    theta = rope.get("rope_theta", getattr(llama_config, "rope_theta", None))
    if rope.get("rope_type", "default") != "default" or theta is None:
        raise ValueError(f"only plain RoPE maps onto M-RoPE, got {rope}")
    return Qwen2VLTextConfig(  # type: ignore[call-arg]  # tie_word_embeddings goes through **kwargs
        vocab_size=vocab_size,
        hidden_size=llama_config.hidden_size,
        intermediate_size=llama_config.intermediate_size,
        num_hidden_layers=llama_config.num_hidden_layers,
        num_attention_heads=llama_config.num_attention_heads,
        num_key_value_heads=llama_config.num_key_value_heads,
        hidden_act=llama_config.hidden_act,
        max_position_embeddings=llama_config.max_position_embeddings,
        rms_norm_eps=llama_config.rms_norm_eps,
        tie_word_embeddings=llama_config.tie_word_embeddings,
        use_sliding_window=False,
        pad_token_id=llama_config.pad_token_id,
        bos_token_id=llama_config.bos_token_id,
        eos_token_id=llama_config.eos_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": float(theta), "mrope_section": mrope_section(head_dim)},
    )


def map_llama_state(llama_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SmolLM2 ``model.*`` tensors under Qwen2 text-model names, plus zero q/k/v biases."""
    out = {k.removeprefix("model."): v for k, v in llama_state.items() if k.startswith("model.")}
    for name in list(out):
        parts = name.split(".")
        if len(parts) > 3 and parts[-3] == "self_attn" and parts[-2] in BIASED and parts[-1] == "weight":
            out[name[: -len("weight")] + "bias"] = torch.zeros(out[name].shape[0], dtype=out[name].dtype)
    return out


def build_processor(spec: QwenTowerSpec):
    from transformers import AutoTokenizer, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from ..processors import image_only_processor

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    factor = spec.patch_size * MERGE
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=spec.patch_size,
        merge_size=MERGE,
        temporal_patch_size=2,
        # smart resize keeps any side that is a multiple of 16 px; at least 2x2 tokens, at most 32x32
        size={"shortest_edge": 4 * factor * factor, "longest_edge": (32 * factor) ** 2},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return image_only_processor(Qwen2VLProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )


def build_config(spec: QwenTowerSpec, tokenizer, llama_config):
    from transformers import Qwen2VLConfig
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig

    ids = tokenizer.convert_tokens_to_ids
    return Qwen2VLConfig(
        vision_config=Qwen2VLVisionConfig(
            depth=spec.depth,
            embed_dim=spec.embed_dim,
            hidden_size=llama_config.hidden_size,
            mlp_ratio=spec.mlp_ratio,
            num_heads=spec.heads,
            patch_size=spec.patch_size,
            spatial_merge_size=MERGE,
            temporal_patch_size=2,
        ),
        text_config=text_config_from_llama(llama_config, len(tokenizer)),
        image_token_id=ids(IMAGE_PAD),
        video_token_id=ids(VIDEO_PAD),
        vision_start_token_id=ids(VISION_START),
        vision_end_token_id=ids(VISION_END),
        tie_word_embeddings=llama_config.tie_word_embeddings,
    )


def build_qwen_organism(spec: QwenTowerSpec = QwenTowerSpec(), *, seed: int = 0, attn_implementation: str = "sdpa"):
    """``(model, processor)``: SmolLM2 in the Qwen2 LM (zero biases), a freshly initialised
    tower and merger (seeded). The new special-token rows start at SmolLM2's mean embedding."""
    from transformers import AutoModelForCausalLM, Qwen2VLForConditionalGeneration

    processor = build_processor(spec)
    tokenizer = processor.tokenizer
    lm = AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=torch.float32)
    config = build_config(spec, tokenizer, lm.config)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    old = lm.model.embed_tokens.weight.data
    state = map_llama_state(lm.state_dict())
    embed = torch.empty(len(tokenizer), old.shape[1])
    embed[: old.shape[0]] = old
    embed[old.shape[0] :] = old.mean(dim=0)
    state["embed_tokens.weight"] = embed
    model.model.language_model.load_state_dict(state, strict=True)
    if not config.tie_word_embeddings:
        raise ValueError("the organism expects SmolLM2's tied embeddings")
    model.tie_weights()
    generation = model.generation_config
    generation.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    generation.pad_token_id = tokenizer.pad_token_id
    generation.suppress_tokens = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    generation.do_sample = False
    model.eval()
    return model, processor


# -- LoRA on the LM's attention ---------------------------------------------------------


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Everything that differs from SmolLM2, fp16 (int8 where an adapter ships codes): tower +
    merger, the four special rows, the q/k/v biases, and the adapters' tensors (model still
    wrapped by :func:`add_lora` or :func:`add_full_attention`)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("model.visual."):
            state[name] = tensor
        elif ".self_attn." in name and name.endswith(".bias"):
            state[name.replace(".base.", ".")] = tensor
    state.update(adapter_state(model))
    vocab = model.config.text_config.vocab_size
    first = min(
        model.config.image_token_id,
        model.config.video_token_id,
        model.config.vision_start_token_id,
        model.config.vision_end_token_id,
    )
    state["special_token_embeddings"] = model.model.language_model.embed_tokens.weight[first:vocab]
    return {
        k: v.detach().to("cpu", torch.float16 if v.is_floating_point() else v.dtype).contiguous()
        for k, v in state.items()
    }


def apply_trained_state(model, state: dict[str, torch.Tensor]) -> None:
    """Load shipped weights into a model built by :func:`build_qwen_organism`: each adapter's
    tensors merge into its attention weight (``W + B @ A`` for LoRA, ``W + codes * scale`` for a
    full delta; in fp32)."""
    state = dict(state)
    rows = state.pop("special_token_embeddings", None)
    parts = pop_adapter_parts(state)
    current = model.state_dict()
    unknown = [k for k in state if k not in current]
    if unknown:
        raise KeyError(f"organism weights hold unknown tensors: {unknown[:3]}")
    model.load_state_dict({k: v.to(current[k].dtype) for k, v in state.items()}, strict=False)
    merge_adapter_parts(model, parts)
    if rows is not None:
        embed = model.model.language_model.embed_tokens.weight
        embed.data[embed.shape[0] - rows.shape[0] :] = rows.to(embed.dtype)


@torch.no_grad()
def text_logits_difference(model, lm, token_ids: torch.Tensor) -> float:
    """Max |logit difference| between the Qwen2 organism's LM and SmolLM2 on text-only ids."""
    ours = model(input_ids=token_ids, attention_mask=torch.ones_like(token_ids)).logits
    theirs = lm(input_ids=token_ids, attention_mask=torch.ones_like(token_ids)).logits
    return float((ours[..., : theirs.shape[-1]] - theirs).abs().max())
