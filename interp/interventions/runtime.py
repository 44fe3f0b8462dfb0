"""What runs inside an nnsight trace: reading and writing hook sites, attention rows.

Everything here uses only torch and the nnsight envoys it is handed, so a trace that
calls it can be shipped to NDIF (``remote=True``) and rebuilt there (the package is
registered for serialisation by value).

Sites (see :mod:`interp.hooks`):

* ``resid_pre`` / ``resid_post``: the decoder layer's first input / its output;
* ``attn_pattern``: the ``(args, kwargs)`` of the attention *function* call inside
  the attention module (``attention_interface(self, q, k, v, mask, ...)``), i.e.
  queries and keys after rotary embedding and before grouped-query expansion, and
  the mask the family built (causal, sliding-window, bidirectional image);
* ``attn_out`` / ``mlp_out``: the attention / MLP module outputs;
* ``final_norm``: the final norm's output.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import sites as registry


def envoy_at(root, path: str):
    """The envoy at a dotted ``path`` below ``root`` (a module path, e.g. ``model.language_model``)."""
    envoy = root
    for attr in path.split("."):
        envoy = getattr(envoy, attr)
    return envoy


class SiteAccess:
    """Where each site lives, for one family (plain strings and ints, so it ships to NDIF).

    ``paths``: the adapter's module paths and names (``layers_path``, ``final_norm_path``,
    ``embed_path``, ``vision_layers_path``, ``projector_path``, ``attn_name``, ``mlp_name``,
    ``q_name``, ``k_name``, ``v_name``, ``o_name``, ``mid_norm_name``); ``attention_op`` is
    the attention-function call in the attention module's source (found by inspecting the
    module, not hard-coded); ``head_dim`` splits q/k/v/z into heads.
    """

    def __init__(self, paths: dict, attention_op: str, head_dim: int):
        self.paths = dict(paths)
        self.attention_op = attention_op
        self.head_dim = head_dim

    def __getattr__(self, name):  # layers_path, attn_name, ... as attributes
        paths = self.__dict__.get("paths", {})
        if name in paths:
            return paths[name]
        raise AttributeError(name)

    def layer(self, model, layer: int):
        return envoy_at(model, self.paths["layers_path"])[layer]

    def _module(self, model, layer, site):
        """``(envoy, "input" | "output")`` of a site that is one module's value (its registry row)."""
        row = registry.site(site)
        return self.module(model, layer, row.module), row.io

    def module(self, model, layer, module: str):
        """The envoy of one of the modules the site registry names (:attr:`interp.sites.Site.module`)."""
        paths = self.paths
        top = {"final_norm": "final_norm_path", "embed": "embed_path", "projector": "projector_path"}
        if module in top:
            return envoy_at(model, paths[top[module]])
        if module == "vision_block":
            return envoy_at(model, paths["vision_layers_path"])[layer]
        block = self.layer(model, layer)
        if module == "block":
            return block
        attn = getattr(block, paths["attn_name"])
        if module == "attn":
            return attn
        if module in ("q", "k", "v", "o"):
            return getattr(attn, paths[f"{module}_name"])
        return getattr(block, paths[f"{module}_name"])  # mid_norm, mlp

    def read(self, model, layer, site: str):
        if site == "attn_pattern":
            block = self.layer(model, layer)
            return getattr(getattr(block, self.paths["attn_name"]).source, self.attention_op).inputs
        if site == "result":
            z = self.read(model, layer, "z")
            weight = getattr(getattr(self.layer(model, layer), self.paths["attn_name"]), self.paths["o_name"]).weight
            return per_head_result(z, weight)
        envoy, which = self._module(model, layer, site)
        value = first(envoy.input if which == "input" else envoy.output)
        return split_heads(value, self.head_dim) if registry.site(site).per_head else value

    def write(self, model, layer, site: str, value) -> None:
        if site == "attn_pattern":
            block = self.layer(model, layer)
            getattr(getattr(block, self.paths["attn_name"]).source, self.attention_op).inputs = value
            return
        row = registry.site(site)
        if not row.writable:
            raise KeyError(f"{site} is read-only")
        if row.per_head:
            value = merge_heads(value)
        envoy, which = self._module(model, layer, site)
        if which == "input":
            envoy.input = value
        else:
            envoy.output = replace_first(envoy.output, value)


def split_heads(value, head_dim: int):
    """``(..., seq, heads * head_dim)`` -> ``(..., seq, heads, head_dim)`` (TransformerLens' layout)."""
    return value.reshape(*value.shape[:-1], value.shape[-1] // head_dim, head_dim)


def merge_heads(value):
    """The inverse of :func:`split_heads` (a value already merged passes through)."""
    return value.reshape(*value.shape[:-2], value.shape[-2] * value.shape[-1]) if value.ndim == 4 else value


def expand_kv(value, n_heads: int):
    """Keys or values ``(batch, kv_heads, seq, d)`` repeated for grouped-query attention to
    ``n_heads`` query heads, query head ``h`` reading KV head ``h // (n_heads // kv_heads)`` (as
    HF's ``repeat_kv``); unchanged without grouping."""
    n_rep = n_heads // value.shape[1]
    return value.repeat_interleave(n_rep, dim=1) if n_rep > 1 else value


def per_head_result(z, o_weight):
    """Each head's contribution to the attention output: ``z[..., h, :] @ W_O[:, h]^T``,
    ``(batch, seq, heads, d_model)`` (the output projection's bias, if any, excluded)."""
    heads, head_dim = z.shape[-2], z.shape[-1]
    w = o_weight.reshape(o_weight.shape[0], heads, head_dim)
    return torch.einsum("bshd,mhd->bshm", z, w.to(z.dtype))


def first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def replace_first(old, new):
    if isinstance(old, tuple):
        return (new,) + tuple(old[1:])
    if isinstance(old, list):
        return [new] + list(old[1:])
    return new


# -- the attention call ---------------------------------------------------------


def attention_call_parts(call_inputs):
    """``(module, query, key, mask, kwargs)`` from the attention function's ``(args, kwargs)``."""
    args, kwargs = call_inputs
    module, query, key = args[0], args[1], args[2]
    mask = args[4] if len(args) > 4 else kwargs.get("attention_mask")
    return module, query, key, mask, kwargs


def with_mask(call_inputs, mask):
    """The attention call's ``(args, kwargs)`` with ``mask`` in place of the original mask."""
    args, kwargs = call_inputs
    if len(args) > 4:
        return (tuple(args[:4]) + (mask,) + tuple(args[5:]), kwargs)
    kwargs = dict(kwargs)
    kwargs["attention_mask"] = mask
    return (tuple(args), kwargs)


def additive_mask(mask, query, key, kwargs, rows=None):
    """The mask as an additive float tensor broadcastable to (batch, heads, q, k).

    HF hands the attention function a float additive mask (eager), a boolean
    keep-mask (SDPA), or ``None`` when the kernel applies causality itself; the
    ``None`` case is rebuilt here (causal, plus the sliding window when given).
    With ``rows`` (indices into the query window) only those query rows are built,
    so recording one row costs O(k) instead of O(q * k).
    """
    q_len, k_len = query.shape[-2], key.shape[-2]
    dtype = query.dtype
    if mask is None:
        q_pos = torch.arange(k_len - q_len, k_len, device=query.device)
        q_pos = (q_pos if rows is None else q_pos[rows.to(query.device)])[:, None]
        k_pos = torch.arange(k_len, device=query.device)[None, :]
        keep = k_pos <= q_pos
        window = kwargs.get("sliding_window")
        if window:
            keep = keep & (q_pos - k_pos < window)
        return torch.where(keep, 0.0, torch.finfo(dtype).min).to(dtype)[None, None]
    mask = mask[..., :k_len]
    if rows is not None and mask.shape[-2] != 1:
        mask = mask[..., rows.to(mask.device), :]
    if mask.dtype == torch.bool:
        return torch.where(mask, 0.0, torch.finfo(dtype).min).to(dtype)
    return mask.to(dtype)


def attention_probs(call_inputs, rows=None):
    """Attention probabilities (batch, heads, len(rows) or q, k) as HF eager computes them.

    ``rows`` selects query rows (indices into the current query window) so that a
    model running SDPA never materialises the full pattern.
    """
    module, query, key, mask, kwargs = attention_call_parts(call_inputs)
    scaling = kwargs.get("scaling")
    if scaling is None:
        scaling = getattr(module, "scaling", None)
    if scaling is None:
        scaling = 1.0 / math.sqrt(query.shape[-1])
    additive = additive_mask(mask, query, key, kwargs, rows)
    if rows is not None:
        query = query[:, :, rows]
    key = expand_kv(key, query.shape[1])
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    softcap = kwargs.get("softcap")
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores + additive
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)


class EditableMask:
    """The attention mask of one layer call, for interventions that block edges.

    Rows are the current query window (absolute positions :attr:`window`), columns
    absolute key positions. The tensor is built only when the first edge is blocked,
    so a run whose interventions block nothing keeps the family's own mask (and the
    kernel's own causal path). ``build()`` returns the tensor, in the mask's own form:
    a boolean keep-mask (SDPA) or an additive float mask (eager).
    """

    def __init__(self, build, window: torch.Tensor):
        self._build = build
        self.window = window
        self.tensor: torch.Tensor | None = None
        self.blocked_value: Any = None

    @property
    def changed(self) -> bool:
        return self.tensor is not None

    def block(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        """Forbid the query ``rows`` (indices into :attr:`window`) to attend to key positions ``cols``."""
        if rows.numel() == 0 or cols.numel() == 0:
            return
        if self.tensor is None:
            self.tensor, self.blocked_value = self._build()
        tensor = self.tensor
        rows = rows.to(tensor.device)
        cols = cols.to(tensor.device)
        block = tensor[..., rows, :]
        block[..., cols] = self.blocked_value
        tensor[..., rows, :] = block


def editable_tensor(mask, query_len: int, key_len: int, *, additive=None):
    """``(tensor, blocked value)``: a private copy of ``mask`` with one row per query.

    A boolean keep-mask stays boolean (blocked = False); otherwise ``additive()`` gives
    the additive float mask (blocked = the dtype's minimum)."""
    blocked: Any
    if mask is not None and mask.dtype == torch.bool:
        new = mask[..., :key_len].clone()
        blocked = False
    else:
        new = additive().clone()
        blocked = torch.finfo(new.dtype).min
    if new.shape[-2] == 1 and query_len > 1:
        new = new.expand(*new.shape[:-2], query_len, new.shape[-1]).clone()
    return new, blocked


def edit_attention_call(call_inputs, edit):
    """The attention call after ``edit(EditableMask)``; unchanged if nothing was blocked."""
    module, query, key, mask, kwargs = attention_call_parts(call_inputs)
    q_len, k_len = query.shape[-2], key.shape[-2]
    editable = EditableMask(
        lambda: editable_tensor(mask, q_len, k_len, additive=lambda: additive_mask(mask, query, key, kwargs)),
        torch.arange(k_len - q_len, k_len),
    )
    edit(editable)
    if not editable.changed:
        return call_inputs
    return with_mask(call_inputs, editable.tensor)


def query_window(call_inputs):
    """Absolute positions of the current query rows (prefill: all; decoding: the new ones)."""
    _, query, key, _, _ = attention_call_parts(call_inputs)
    q_len, k_len = query.shape[-2], key.shape[-2]
    return torch.arange(k_len - q_len, k_len)


# -- one row of a padded batch ----------------------------------------------------


def row_value(site: str, value, row: int, length: int):
    """Batch row ``row`` of a right-padded batch's value at ``site``, cut to its own ``length``
    tokens: what the site holds when that row's sample runs alone (its positions are the same,
    padding comes after them). ``attn_pattern``: the attention call with its queries, keys,
    values and mask cut to the row (query and key axes). Other sites (the vision tower's) do
    not run along the token axis and have no such row."""
    if registry.site(site).token_axis:
        return value[row : row + 1, :length]
    if site != "attn_pattern":
        raise KeyError(f"{site} values have no token axis to cut into batch rows")
    args, kwargs = value
    args = list(args)
    for i in (1, 2, 3):  # query, key, value: (batch, heads, seq, head_dim)
        if i < len(args) and isinstance(args[i], torch.Tensor):
            args[i] = args[i][row : row + 1, :, :length]
    mask = args[4] if len(args) > 4 else kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        mask = mask[row : row + 1] if mask.shape[0] > 1 else mask
        mask = mask[..., :length, :length]
        if len(args) > 4:
            args[4] = mask
        else:
            kwargs = {**kwargs, "attention_mask": mask}
    return (tuple(args), kwargs)
