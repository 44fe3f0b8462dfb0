"""Trained changes to the LM's frozen attention projections, kept apart so only the change ships.

An :class:`Adapter` wraps one q/k/v/o projection while training (:func:`add_lora`: low-rank
factors; :func:`add_full_attention`: a full-rank difference shipped as int8 codes). What it ships
is keyed ``{kind}.{layer}.{projection}.{part}``; :func:`merge_adapter_parts` adds the shipped
changes into an ordinary model's weights, so the result is a plain HF checkpoint. Used by the
Qwen2-VL organism and by the planted-fusion variants of the LLaVA organism.
"""

from __future__ import annotations

import math

import torch

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


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


def pop_adapter_parts(state: dict[str, torch.Tensor]) -> dict[tuple[str, int, str], dict[str, torch.Tensor]]:
    """Take the adapters' shipped tensors out of ``state`` (in place), grouped by
    ``(kind, layer, projection)``."""
    parts: dict[tuple[str, int, str], dict[str, torch.Tensor]] = {}
    for key in [k for k in state if k.split(".", 1)[0] in ADAPTERS]:
        kind, layer, name, part = key.split(".")
        parts.setdefault((kind, int(layer), name), {})[part] = state.pop(key)
    return parts


def merge_adapter_parts(model, parts: dict[tuple[str, int, str], dict[str, torch.Tensor]]) -> None:
    """Add each shipped change into its attention weight, in the weight's dtype (computed in fp32)."""
    layers = model.model.language_model.layers
    for (kind, index, name), tensors in parts.items():
        weight = getattr(layers[index].self_attn, name).weight
        weight.data += ADAPTERS[kind].delta_of(tensors).to(weight.device, weight.dtype)
