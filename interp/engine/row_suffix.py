"""Row-level restart: the first row a restart must recompute, and layer keywords cut to the rows from it.

Rows before the first row any variant can change (:func:`first_changed_row`, from each
intervention's ``first_row``) are clean in every layer (causal attention); a restart recomputes
only the rows from there on, with each layer's captured keywords cut to those query rows
(:func:`_suffix_kwargs`).
"""

from __future__ import annotations

import torch

from ..interventions.base import Intervention
from .clean_pass import CleanPass


#: layer keywords a row-suffix restart knows how to cut to the recomputed rows (anything else
#: that is a tensor makes it fall back to every row)
_ROW_KEYWORDS = {
    "attention_mask",
    "position_embeddings",
    "position_ids",
    "cache_position",
    "cache",
    "past_key_values",
    "use_cache",
}


def _is_tensorish(value) -> bool:
    return isinstance(value, torch.Tensor) or (
        isinstance(value, (tuple, list)) and any(isinstance(item, torch.Tensor) for item in value)
    )


def _sees_forward(mask, row: int) -> int | None:
    """The first query row before ``row`` that may attend to a key at or after ``row``
    (bidirectional image attention), or None when none does (causal masks)."""
    if mask is None or row <= 0:
        return None
    block = mask[..., :row, row:]
    keep = block if block.dtype == torch.bool else block > torch.finfo(block.dtype).min / 2
    seeing = keep.reshape(-1, *keep.shape[-2:]).any(dim=0).any(dim=-1).nonzero()
    return int(seeing[0]) if seeing.numel() else None


def first_changed_row(vlm, clean: CleanPass, start: int, variants: list[list[Intervention]]) -> int:
    """The first sequence row the ``variants`` (bound) can change when restarted at ``start``.

    Each intervention says it through its interface: ``first_row(layer, site)`` is the first
    prefill position it can change (or read) at that site, None if it changes none (the base
    class says 0: every row). Rows before the returned one are clean in every layer
    from ``start`` on (causal attention), so a restart recomputes only the rows from it on.
    Lowered until no earlier row attends to it (bidirectional image blocks) and to the first
    scored position; 0 where a layer keyword cannot be cut to a row suffix."""
    row = None
    for items in variants:
        for item in items:
            for layer, site in item.sites():
                if layer is not None and layer < start:
                    continue
                found = item.first_row(layer, site)
                if found is not None:
                    row = int(found) if row is None else min(row, int(found))
    row = int(clean.positions.min()) if row is None else min(row, int(clean.positions.min()))
    if row <= 0:
        return 0
    for index in range(start, vlm.n_layers):
        args, kwargs = clean.layer_call(index)
        if len(args) > 1 or any(
            key not in _ROW_KEYWORDS and key != "hidden_states" and _is_tensorish(value)
            for key, value in kwargs.items()
        ):
            return 0
        mask = kwargs.get("attention_mask")
        full = (clean.prepared.seq_len,) * 2
        if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape[-2:]) != full):
            return 0  # only a full (query x key) mask can be cut to the query rows
        while (earlier := _sees_forward(mask, row)) is not None:
            row = earlier
    return row


def _suffix_kwargs(kwargs: dict, row: int, keys: int, device) -> dict:
    """A layer's captured keywords cut to the query rows ``row ..``: rotary tables and position
    ids along the sequence, the mask to those query rows (plain causal made explicit, since
    the kernel's own causal flag assumes as many queries as keys)."""
    out = dict(kwargs)
    if row == 0:
        return out
    mask = kwargs.get("attention_mask")
    if mask is None:
        mask = torch.ones(keys, keys, dtype=torch.bool, device=device).tril()[None, None]
    out["attention_mask"] = mask[..., row:, :] if mask.shape[-2] != 1 else mask
    embeddings = kwargs.get("position_embeddings")
    if embeddings is not None:
        out["position_embeddings"] = type(embeddings)(t[..., row:, :] for t in embeddings)
    for key in ("position_ids", "cache_position"):
        if isinstance(kwargs.get(key), torch.Tensor):
            out[key] = kwargs[key][..., row:]
    return out
