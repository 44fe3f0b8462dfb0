"""An activation cache that behaves like TransformerLens' ``ActivationCache`` for what TL
users do most.

TransformerLens' own class needs a ``HookedTransformer`` (its ``cfg``, ``ln_final`` and
unembedding) for most methods, which a HF vision-language model is not; this class
keeps TL's interface on a plain dict of tensors keyed by hook name:

* ``cache["blocks.5.attn.hook_pattern"]`` or ``cache["pattern", 5]`` (TL's short names:
  ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``, ``pattern``,
  ``q``, ``k``, ``v``, ``z``, ``result``; ``embed``, ``projected``, ``ln_final``);
* ``stack_activation("resid_post")`` -> ``[n_layers, ...]``;
* ``accumulated_resid(layer=None, incl_mid=False, apply_ln=False, return_labels=False)``;
* ``remove_batch_dim()``, ``to(device)``, ``save(path)`` / ``ActivationCache.load(path)``;
* ``keys()``, ``values()``, ``items()``, ``in``, ``len``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from collections.abc import Iterator

import torch

from . import sites as registry
from .errors import HookNameError, InterpError
from .hooks import EMBED, FINAL_NORM, PROJECTED, natural_key


def _short_names() -> dict[str, str]:
    """TransformerLens' short names of the layered sites (``"pattern"`` -> its name template)."""
    return {row.short: row.name for row in registry.REGISTRY if row.short and row.layered}


_GLOBAL = {"embed": EMBED, "projected": PROJECTED, "ln_final": FINAL_NORM, "normalized": FINAL_NORM}


def act_name(name: str, layer: int | None = None) -> str:
    """TransformerLens' ``utils.get_act_name`` for our names: ``("pattern", 5)`` ->
    ``"blocks.5.attn.hook_pattern"``; full names pass through."""
    if layer is None:
        if name in _GLOBAL:
            return _GLOBAL[name]
        return name
    short = _short_names()
    if name not in short:
        raise HookNameError(f"unknown activation name {name!r}; short names: {', '.join(sorted(short))}")
    return short[name].format(l=int(layer))


class ActivationCache:
    """Activations of one run, by hook name, with TransformerLens' ``ActivationCache`` interface.

    Index it by a full hook name or by TL's ``(short name, layer)``; it also has
    ``keys()``, ``values()``, ``items()``, ``in`` and ``len``. Made by
    :meth:`interp.VLM.run_with_cache`.

    Args:
        cache_dict: the activations, hook name -> tensor.
        n_layers: the model's decoder layer count.
        model: the :class:`~interp.models.vlm.VLM` (needed by ``accumulated_resid(apply_ln=True)``).
        has_batch_dim: whether the values have a leading batch axis.

    Example:
        ```python
        logits, cache = vlm.run_with_cache(sample)
        cache["pattern", 5]  # = cache["blocks.5.attn.hook_pattern"]
        cache.stack_activation("resid_post")  # [n_layers, batch, seq, d_model]
        ```
    """

    def __init__(self, cache_dict: dict, n_layers: int, *, model=None, has_batch_dim: bool = True):
        self.cache_dict = dict(cache_dict)
        self.n_layers = n_layers
        self.model = model
        self.has_batch_dim = has_batch_dim

    # -- dict behaviour ----------------------------------------------------------

    def _key(self, key) -> str:
        if isinstance(key, tuple):
            if len(key) != 2:
                raise HookNameError(f"index the cache by a name or (name, layer), got {key!r}")
            name, layer = key
            if layer is not None and layer < 0:
                layer += self.n_layers
            return act_name(name, layer)
        return act_name(key)

    def __getitem__(self, key) -> torch.Tensor:
        """``cache[name]`` or ``cache[short_name, layer]`` (a negative layer counts from the end).

        Args:
            key: a hook name, or ``(short name, layer)`` as TransformerLens'
                ``utils.get_act_name`` takes them.

        Returns:
            The activation.

        Raises:
            HookNameError: an unknown name, or one not in the cache.
        """
        name = self._key(key)
        if name not in self.cache_dict:
            raise HookNameError(f"{name!r} is not in the cache ({len(self.cache_dict)} names; see cache.keys())")
        return self.cache_dict[name]

    def __contains__(self, key) -> bool:
        try:
            return self._key(key) in self.cache_dict
        except HookNameError:
            return False

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def keys(self) -> list[str]:
        """The hook names cached.

        Returns:
            The names in natural order (``blocks.2`` before ``blocks.10``).
        """
        return sorted(self.cache_dict, key=natural_key)

    def values(self) -> list[torch.Tensor]:
        return [self.cache_dict[k] for k in self.keys()]

    def items(self) -> list[tuple[str, torch.Tensor]]:
        return [(k, self.cache_dict[k]) for k in self.keys()]

    def __repr__(self) -> str:
        return f"ActivationCache with keys {self.keys()[:6]}{' ...' if len(self) > 6 else ''} ({len(self)} names)"

    # -- TransformerLens' helpers ------------------------------------------------------

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the batch axis of a batch-1 cache (vision activations without one pass through).

        Returns:
            A new cache without the batch axis (this one when it has none already).

        Raises:
            InterpError: the batch is larger than one.
        """
        if not self.has_batch_dim:
            return self
        out = {}
        for name, value in self.cache_dict.items():
            if name.startswith("vision.") or name == PROJECTED:
                out[name] = value[0] if value.ndim >= 3 and value.shape[0] == 1 else value
                continue
            if value.shape[0] != 1:
                raise InterpError(f"remove_batch_dim needs a batch of one; {name} has batch {value.shape[0]}")
            out[name] = value[0]
        return ActivationCache(out, self.n_layers, model=self.model, has_batch_dim=False)

    def stack_activation(self, activation_name: str, layer: int = -1) -> torch.Tensor:
        """One activation of every layer, stacked.

        Args:
            activation_name: a short name (``"resid_post"``, ``"pattern"`` ...).
            layer: stop before this layer (exclusive, as TransformerLens); -1: every layer.

        Returns:
            A tensor ``[n_layers, ...]``.

        Raises:
            HookNameError: the name is unknown or a layer's value is not in the cache.
        """
        stop = self.n_layers if layer == -1 else layer
        return torch.stack([self[activation_name, l] for l in range(stop)])

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        return_labels: bool = False,
        pos_slice: Any = None,
    ):
        """The residual stream before each layer, stacked, as TransformerLens' method.

        Args:
            layer: stop before this layer; None: every layer, plus the final residual.
            incl_mid: also the residual between attention and MLP of each layer.
            apply_ln: apply the model's final norm to each, as TransformerLens does for the
                logit lens.
            return_labels: also return a label per component (``"3_pre"``, ``"3_mid"``,
                ``"final_post"``).
            pos_slice: keep only these positions (an index or slice of the sequence axis).

        Returns:
            The stack ``[components, ...]``, or ``(stack, labels)`` with ``return_labels``.

        Raises:
            InterpError: ``apply_ln`` on a cache without its model.
        """
        stop = self.n_layers if layer is None else layer
        labels, parts = [], []
        for l in range(stop):
            labels.append(f"{l}_pre")
            parts.append(self["resid_pre", l])
            if incl_mid:
                labels.append(f"{l}_mid")
                parts.append(self["resid_mid", l])
        if layer is None or layer == self.n_layers:
            labels.append("final_post")
            parts.append(self["resid_post", self.n_layers - 1])
        stacked = torch.stack(parts)
        if pos_slice is not None:
            stacked = stacked[..., pos_slice, :]
        if apply_ln:
            if self.model is None:
                raise InterpError("apply_ln needs the cache's model (run_with_cache sets it)")
            norm = self.model.adapter.resolve(self.model.model, "final_norm")
            with torch.no_grad():
                stacked = norm(stacked.to(self.model.device, self.model.dtype)).to(stacked.dtype).cpu()
        return (stacked, labels) if return_labels else stacked

    def to(self, device) -> ActivationCache:
        """The cache on another device.

        Args:
            device: a torch device (or its name).

        Returns:
            A new cache with every tensor on ``device``.
        """
        return ActivationCache(
            {k: v.to(device) for k, v in self.cache_dict.items()},
            self.n_layers,
            model=self.model,
            has_batch_dim=self.has_batch_dim,
        )

    # -- disk ---------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the cache to one safetensors file (the layer count and batch flag in its metadata).

        Args:
            path: the file to write.

        Returns:
            The path written.
        """
        from safetensors.torch import save_file

        path = Path(path)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.cache_dict.items()},
            str(path),
            metadata={"n_layers": str(self.n_layers), "has_batch_dim": str(int(self.has_batch_dim))},
        )
        return path

    @classmethod
    def load(cls, path: str | Path, model=None) -> ActivationCache:
        """Read a cache that :meth:`save` wrote.

        Args:
            path: the safetensors file.
            model: the :class:`~interp.models.vlm.VLM` to attach (for ``apply_ln``).

        Returns:
            The cache.

        Raises:
            InterpError: no such file, or not one :meth:`save` wrote.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise InterpError(f"no cache file at {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for a bad file
            raise InterpError(
                f"{path} is not a readable safetensors file ({str(error).splitlines()[0][:100]})"
            ) from None
        if "n_layers" not in meta:
            raise InterpError(f"{path} is not an interp ActivationCache file (no n_layers in its metadata)")
        return cls(tensors, int(meta["n_layers"]), model=model, has_batch_dim=meta.get("has_batch_dim", "1") == "1")
