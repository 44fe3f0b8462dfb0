"""The restarted variants' interventions, applied to a batch of variants inside the restart.

:class:`_Variants` sorts each variant's interventions by layer and site (replaying the clean
pass's recordings below its restart layer) and applies them to the batch rows that hold it:
hidden-state edits, attention-mask edits (:func:`_layer_mask`) and hooks inside a layer.
"""

from __future__ import annotations

import torch

from .. import sites as registry
from ..errors import InterpError
from ..interventions.base import Intervention, StepContext
from ..interventions.runtime import EditableMask, editable_tensor, first, merge_heads, replace_first, split_heads
from .clean_pass import CleanPass
from .plan import build_schedule


#: sites the fast path recomputes (and so can edit) in the layers it runs (interp.sites: restartable)
_HIDDEN_SITES = registry.keys(restartable=True)


def _layer_mask(mask, rows: int, keys: int, row: int, n_variants: int, device):
    """``(tensor, blocked value)``: the layer's mask for query rows ``row .. row+rows-1``, one
    editable copy per variant — a bool keep-mask for SDPA (``None`` means plain causal), the
    additive float mask for eager."""
    if mask is None:
        causal = torch.ones(keys, keys, dtype=torch.bool, device=device).tril()[row : row + rows]
        return causal[None, None].expand(n_variants, 1, rows, keys).clone(), False
    if not isinstance(mask, torch.Tensor):
        raise InterpError(f"cannot edit an attention mask of type {type(mask).__name__} on the fast path")
    tensor, blocked = editable_tensor(mask, rows, keys, additive=lambda: mask)
    return tensor.expand(n_variants, *tensor.shape[1:]).clone(), blocked


class _Variants:
    """The variants' interventions, sorted by layer and site, and one step context each.

    Variant ``v`` restarts at layer ``starts[v]`` on the rows from ``offsets[v]`` (the absolute
    position of its first recomputed row); its sites below ``starts[v]`` ran clean
    (:meth:`Intervention.before_restart`). Every method takes ``members``: the variants a batch
    holds, batch row ``j`` holding variant ``members[j]``."""

    def __init__(self, clean: CleanPass, starts: list[int], variants: list[list[Intervention]], offsets: list[int]):
        prepared = clean.prepared
        self.contexts = [StepContext.of(prepared, {}, offset=offset) for offset in offsets]
        self.offsets = offsets
        self.at: dict[tuple[int, str], list[tuple[int, Intervention]]] = {}
        for v, items in enumerate(variants):
            for layer, site, group in build_schedule(items):
                if layer is not None and layer < starts[v]:
                    for item in group:
                        item.before_restart(layer, site, clean, self.contexts[v])
                    continue
                if layer is None or (site not in _HIDDEN_SITES and site != "attn_pattern"):
                    raise InterpError(f"the fast path runs decoder layers only; {site} edits need mode='naive'")
                self.at.setdefault((layer, site), []).extend((v, item) for item in group)

    def _todo(self, layer: int, site: str, members: list[int]) -> list[tuple[int, int, Intervention]]:
        """``(batch row, variant, intervention)`` of the members' edits at the site."""
        where = {v: j for j, v in enumerate(members)}
        return [(where[v], v, item) for v, item in self.at.get((layer, site), ()) if v in where]

    def inside(self, layer: int, members: list[int]) -> set[int]:
        """Members with edits inside ``layer`` (its queries, keys, values, attention pattern, attention or MLP output)."""
        return {
            v
            for site in ("q", "k", "v", "attn_pattern", "z", "attn_out", "mlp_out")
            for _, v, _ in self._todo(layer, site, members)
        }

    def edits_rows(self, layer: int, members: list[int]) -> bool:
        """Whether any member edits or records a hidden state of ``layer`` beyond its input
        (``z``, ``attn_out``, ``mlp_out``, ``resid_post``; attention-mask edits act before them)."""
        return any(self._todo(layer, site, members) for site in _HIDDEN_SITES if site != "resid_pre")

    def edit_hidden(self, layer: int, site: str, hidden: torch.Tensor, members: list[int]) -> torch.Tensor:
        todo = self._todo(layer, site, members)
        if not todo:
            return hidden
        hidden = hidden.clone()
        for j, v, item in todo:
            hidden[j : j + 1] = item.edit_hidden(layer, site, hidden[j : j + 1], self.contexts[v])
        return hidden

    def edit_mask(self, layer: int, mask, hidden: torch.Tensor, keys: int, members: list[int]):
        todo = self._todo(layer, "attn_pattern", members)
        if not todo:
            return mask, False
        built: dict = {}
        rows = hidden.shape[1]
        offset = self.offsets[members[0]]

        def per_variant():
            if "tensor" not in built:
                built["tensor"], built["blocked"] = _layer_mask(
                    mask, rows, keys, offset, hidden.shape[0], hidden.device
                )
            return built["tensor"], built["blocked"]

        window = torch.arange(offset, offset + rows)
        for j, v, item in todo:
            editable = EditableMask(lambda j=j: (per_variant()[0][j : j + 1], per_variant()[1]), window)
            item.edit_mask(layer, editable, self.contexts[v])
        return (built["tensor"], True) if "tensor" in built else (mask, False)

    def hooks(self, layer: int, block, access, members: list[int]) -> list:
        """Forward hooks for the edits inside ``block``: ``q``, ``k`` and ``v`` on the query, key
        and value projections' outputs and ``z`` on the attention's output projection's input
        (split into heads as their hook names show them), ``attn_out`` and ``mlp_out``
        on those modules' outputs."""
        handles = []
        attn = getattr(block, access.attn_name)
        for site in ("q", "k", "v"):
            if self._todo(layer, site, members):

                def projected(module, args, output, site=site):
                    heads = split_heads(first(output), access.head_dim)
                    return replace_first(output, merge_heads(self.edit_hidden(layer, site, heads, members)))

                handles.append(getattr(attn, getattr(access, f"{site}_name")).register_forward_hook(projected))
        if self._todo(layer, "z", members):

            def pre_hook(module, args):
                heads = split_heads(args[0], access.head_dim)
                return (merge_heads(self.edit_hidden(layer, "z", heads, members)),) + tuple(args[1:])

            handles.append(getattr(attn, access.o_name).register_forward_pre_hook(pre_hook))
        for site, module in (("attn_out", attn), ("mlp_out", getattr(block, access.mlp_name))):
            if self._todo(layer, site, members):

                def hook(module, args, output, site=site):
                    return replace_first(output, self.edit_hidden(layer, site, first(output), members))

                handles.append(module.register_forward_hook(hook))
        return handles
