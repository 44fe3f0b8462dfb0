"""Logits from final hidden states, as the model's own forward computes them.

:func:`unembed` applies the final norm, the unembedding and (Gemma) logit soft-capping to the
hidden states a restart returns (call it once per sample for everything collected).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def unembed(vlm, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm, unembedding and (Gemma) logit soft-capping, as the model's forward applies them."""
    model = vlm.model
    logits = vlm.adapter.resolve(model, "lm_head")(vlm.adapter.resolve(model, "final_norm")(hidden))
    cap = getattr(vlm.adapter.text_config(vlm.config), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()
