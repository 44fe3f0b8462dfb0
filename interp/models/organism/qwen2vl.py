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

import math
from dataclasses import asdict, dataclass

import torch

from .smollm2 import smollm2_dir

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
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
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


class Adapter(torch.nn.Module):
    """A trained change to one frozen attention projection, kept apart from SmolLM2's weight so
    that only the change ships. Each kind says what it ships (``shipped``), how the shipped
    tensors give back the weight difference (``delta_of``) and how to round itself to them."""

    kind = ""

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        """The adapter's own tensors (the frozen ``base`` projection's excluded)."""
        return [p for n, p in self.named_parameters() if not n.startswith("base.")]

    def delta(self) -> torch.Tensor:
        raise NotImplementedError

    def shipped(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @staticmethod
    def delta_of(parts: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def round_to_shipped(self) -> None:
        raise NotImplementedError


class LoRALinear(Adapter):
    """``base(x) + (x A^T B^T) * alpha / rank`` with ``base`` frozen; ``B`` starts at zero."""

    kind = "lora"

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.rank, self.scale = rank, alpha / rank
        device = base.weight.device  # the factors live with the projection they adapt (a GPU run's too)
        self.lora_A = torch.nn.Parameter(torch.empty(rank, base.in_features, device=device))
        self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, rank, device=device))
        torch.nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x):
        return (
            self.base(x)
            + torch.nn.functional.linear(torch.nn.functional.linear(x, self.lora_A), self.lora_B) * self.scale
        )

    def delta(self) -> torch.Tensor:
        return (self.lora_B.float() @ self.lora_A.float()) * self.scale

    def shipped(self) -> dict[str, torch.Tensor]:
        # B carries the scale, so a merge is W + B @ A whatever the rank
        return {"A": self.lora_A.detach(), "B": self.lora_B.detach() * self.scale}

    @staticmethod
    def delta_of(parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return parts["B"].float() @ parts["A"].float()

    @torch.no_grad()
    def round_to_shipped(self) -> None:
        for factor in (self.lora_A, self.lora_B):
            factor.copy_(factor.to(torch.float16).to(factor.dtype))


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(int8 codes, fp16 scale per row)`` with ``codes * scale`` within half a step of ``weight``
    (symmetric, each row's largest magnitude at 127)."""
    weight = weight.detach().float()
    scale = (weight.abs().amax(dim=1) / 127).to(torch.float16).float()
    codes = torch.round(weight / scale.clamp_min(1e-12)[:, None]).clamp(-127, 127).to(torch.int8)
    return codes, scale.to(torch.float16)


class DeltaLinear(Adapter):
    """``x (W + D)^T + b`` with SmolLM2's ``W`` frozen and the full-rank ``D`` (zero at the start)
    trained: full fine-tuning of the projection (the LLaVA organism's stage 2), with what it learned
    held apart. It ships as int8 per-row codes of ``D`` (a quarter of fp32, half of fp16): the
    rounding error is half a step of ``D``'s own scale, not of ``W``'s."""

    kind = "delta"

    def __init__(self, base: torch.nn.Linear):
        super().__init__()
        self.base = base
        self.delta_weight = torch.nn.Parameter(torch.zeros_like(base.weight))

    def forward(self, x):
        return torch.nn.functional.linear(x, self.base.weight + self.delta_weight, self.base.bias)

    def delta(self) -> torch.Tensor:
        return self.delta_weight.float()

    def shipped(self) -> dict[str, torch.Tensor]:
        codes, scale = quantize_rows(self.delta_weight)
        return {"int8": codes, "scale": scale}

    @staticmethod
    def delta_of(parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return parts["int8"].float() * parts["scale"].float()[:, None]

    @torch.no_grad()
    def round_to_shipped(self) -> None:
        self.delta_weight.copy_(self.delta_of(self.shipped()).to(self.delta_weight.dtype))


ADAPTERS = {cls.kind: cls for cls in (LoRALinear, DeltaLinear)}


def attention_modules(model):
    """``(layer index, projection name, attention module)`` over the LM's attention projections."""
    for index, layer in enumerate(model.model.language_model.layers):
        for name in LORA_TARGETS:
            yield index, name, layer.self_attn


def _wrap(model, make) -> list[torch.nn.Parameter]:
    params = []
    for _, name, attention in attention_modules(model):
        module = getattr(attention, name)
        if not isinstance(module, Adapter):
            module = make(module)
            setattr(attention, name, module)
        params += module.trained_parameters()
    return params


def add_lora(model, rank: int, alpha: float) -> list[torch.nn.Parameter]:
    """Wrap every q/k/v/o projection in :class:`LoRALinear` (training only); returns the factors."""
    return _wrap(model, lambda base: LoRALinear(base, rank, alpha))


def add_full_attention(model) -> list[torch.nn.Parameter]:
    """Wrap every q/k/v/o projection in :class:`DeltaLinear` (training only); returns the deltas."""
    return _wrap(model, DeltaLinear)


def adapters(model):
    """``(layer index, projection name, adapter)`` of every adapted attention projection."""
    for index, name, attention in attention_modules(model):
        module = getattr(attention, name)
        if isinstance(module, Adapter):
            yield index, name, module


def adapter_state(model) -> dict[str, torch.Tensor]:
    """What the adapters ship, as ``{kind}.{layer}.{projection}.{part}``."""
    return {
        f"{module.kind}.{index}.{name}.{part}": tensor
        for index, name, module in adapters(model)
        for part, tensor in module.shipped().items()
    }


def merge_adapters(model) -> None:
    """Merge every :class:`Adapter` into its base projection (in place) and unwrap it."""
    for index, name, module in list(adapters(model)):
        module.base.weight.data += module.delta().to(module.base.weight.dtype)
        setattr(model.model.language_model.layers[index].self_attn, name, module.base)


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
    parts: dict[tuple[str, int, str], dict[str, torch.Tensor]] = {}
    for key in [k for k in state if k.split(".", 1)[0] in ADAPTERS]:
        kind, layer, name, part = key.split(".")
        parts.setdefault((kind, int(layer), name), {})[part] = state.pop(key)
    current = model.state_dict()
    unknown = [k for k in state if k not in current]
    if unknown:
        raise KeyError(f"organism weights hold unknown tensors: {unknown[:3]}")
    model.load_state_dict({k: v.to(current[k].dtype) for k, v in state.items()}, strict=False)
    layers = model.model.language_model.layers
    for (kind, index, name), tensors in parts.items():
        weight = getattr(layers[index].self_attn, name).weight
        weight.data += ADAPTERS[kind].delta_of(tensors).to(weight.dtype)
    if rows is not None:
        embed = model.model.language_model.embed_tokens.weight
        embed.data[embed.shape[0] - rows.shape[0] :] = rows.to(embed.dtype)


@torch.no_grad()
def text_logits_difference(model, lm, token_ids: torch.Tensor) -> float:
    """Max |logit difference| between the Qwen2 organism's LM and SmolLM2 on text-only ids."""
    ours = model(input_ids=token_ids, attention_mask=torch.ones_like(token_ids)).logits
    theirs = lm(input_ids=token_ids, attention_mask=torch.ones_like(token_ids)).logits
    return float((ours[..., : theirs.shape[-1]] - theirs).abs().max())
