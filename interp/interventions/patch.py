"""Activation patching: replace the run's activations with those of a *source* input.

``PatchActivations`` writes a source run's values into the run at chosen hook points
(``blocks.{l}.hook_resid_pre | hook_attn_out | hook_mlp_out | hook_resid_post``, the
attention's ``blocks.{l}.attn.hook_q | hook_k | hook_v`` (before rotary embedding), per
head ``blocks.{l}.attn.hook_z`` with ``heads=``, or ``layers`` + ``site``) and positions. The source's values are read from the step
context's ``records`` under the key :meth:`PatchActivations.source_key` gives::

    ("source:blocks.{l}.hook_{site}", l, 0) -> tensor (batch, source_seq_len, d_model)

i.e. the source's *whole* activation at that hook point (every position), recorded by
:meth:`PatchActivations.source_recorder` in a source pass before the base pass
(:func:`interp.analysis.patching.run_patched` runs both in one nnsight session). Values
given at construction (``source_values``, same keys) are used where ``ctx.records``
has none, which is how the captured-prefix fast path hands them over today.

Positions (``positions=``): ``"image"``, ``"question"``, ``"last"``, ``"text"``,
``"all"``, explicit positions, or :class:`ImageCells` (cells of an image's patch
grid). Positions are matched between base and source *by role*: the k-th image token
of the base gets the k-th image token of the source (so the image-token counts must
match), the k-th question token the k-th question token, the last the last; explicit
positions, ``"text"`` and ``"all"`` are absolute and need equal sequence lengths.
Each mismatch is one clear error at bind time.

Patching acts at the prefill forward only (the positions are prompt positions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Iterable

import torch

from .. import sites as registry
from ..errors import InputError, InterpError
from ..hooks import hook_name, parse_hook_name
from .base import Intervention, StepContext, resolve_layers, resolve_positions

#: sites a patch can write, in forward order (the restartable ones of interp.sites). ``z`` is each head's attention output before the
#: output projection (``blocks.{l}.attn.hook_z``, ``[batch, seq, heads, head_dim]``): patching
#: heads ``H`` there is patching their ``hook_result`` (``z_h @ W_O[:, h]``), which is read-only.
#: Attention patterns are not patchable (knockouts edit them).
PATCH_SITES = registry.keys(restartable=True)


@dataclass(frozen=True)
class ImageCells:
    """Cells of an image's patch grid, as a position selector for :class:`PatchActivations`.

    Cells no token covers (e.g. LLaVA-NeXT's removed padding) are skipped.

    Args:
        cells: a boolean ``[rows, cols]`` mask or a list of ``(row, col)`` pairs.
        image: which image of the prompt.
        view: a named view of the image's layout; None: its primary grid.

    Example:
        ```python
        top_left = interp.ImageCells([(0, 0), (0, 1), (1, 0), (1, 1)])  # of image 0
        patch = interp.PatchActivations(layers=[2], positions=top_left)
        ```
    """

    cells: Any
    image: int = 0
    view: str | None = None

    def grid_view(self, prepared):
        if self.image >= len(prepared.layouts):
            raise InputError(f"image {self.image} does not exist: the prompt has {len(prepared.layouts)} image(s)")
        layout = prepared.layouts[self.image]
        return layout.view(self.view) if self.view else layout.grid

    def mask(self, shape: tuple[int, int]) -> torch.Tensor:
        cells = self.cells
        if isinstance(cells, torch.Tensor) or hasattr(cells, "shape"):
            mask = torch.as_tensor(cells).bool()
            if tuple(mask.shape) != tuple(shape):
                raise InputError(
                    f"a cell mask of shape {tuple(mask.shape)} does not fit the {shape[0]}x{shape[1]} grid"
                )
            return mask
        mask = torch.zeros(shape, dtype=torch.bool)
        for row, col in cells:
            if not (0 <= row < shape[0] and 0 <= col < shape[1]):
                raise InputError(f"cell ({row}, {col}) is outside the {shape[0]}x{shape[1]} grid")
            mask[row, col] = True
        return mask

    def positions(self, prepared) -> torch.Tensor:
        """Absolute positions of the chosen cells' tokens, in row-major cell order.

        Args:
            prepared: the prompt whose image grid the cells are on.

        Returns:
            A LongTensor of sequence positions.

        Raises:
            InputError: the image does not exist, or the cells do not fit its grid.
        """
        view = self.grid_view(prepared)
        flat = view.positions.reshape(-1)[self.mask(view.shape).reshape(-1)]
        return flat[flat >= 0].clone()


def _positions(selector, prepared, what: str) -> torch.Tensor:
    if isinstance(selector, ImageCells):
        return selector.positions(prepared)
    positions = resolve_positions(
        selector,
        image_positions=prepared.image_positions.cpu(),
        question_positions=prepared.question_positions.cpu(),
        seq_len=prepared.seq_len,
        what=what,
    )
    if isinstance(positions, str):  # "last"
        return torch.tensor([prepared.seq_len - 1])
    return positions.cpu()


def aligned_positions(selector, base, source) -> tuple[torch.Tensor, torch.Tensor]:
    """``(base positions, source positions)`` of a selector, matched by role; one clear
    error where they cannot align."""
    base_pos = _positions(selector, base, "patch")
    if source is None:
        return base_pos, base_pos
    if isinstance(selector, ImageCells):
        b_view, s_view = selector.grid_view(base), selector.grid_view(source)
        if b_view.shape != s_view.shape:
            raise InputError(
                f"the source's patch grid is {s_view.rows}x{s_view.cols} but the base's is "
                f"{b_view.rows}x{b_view.cols}: patching image cells needs equal grids"
            )
    elif selector == "image" and source.n_image_tokens != base.n_image_tokens:
        raise InputError(
            f"the source has {source.n_image_tokens} image tokens but the base has "
            f"{base.n_image_tokens}: patching image positions needs equal counts (same image size)"
        )
    elif selector == "question" and len(source.question_positions) != len(base.question_positions):
        raise InputError(
            f"the source's question has {len(source.question_positions)} tokens but the base's has "
            f"{len(base.question_positions)}: patching question positions needs equal lengths"
        )
    elif not isinstance(selector, str) or selector in ("all", "text"):
        if source.seq_len != base.seq_len:
            raise InputError(
                f"the source has {source.seq_len} tokens but the base has {base.seq_len}: "
                f"{selector if isinstance(selector, str) else 'explicit'} positions must align; "
                "use 'image', 'question', 'last' or ImageCells"
            )
        if selector == "text" and not torch.equal(source.image_positions.cpu(), base.image_positions.cpu()):
            raise InputError("the source's image tokens sit elsewhere than the base's: 'text' positions must align")
    source_pos = _positions(selector, source, "patch")
    if len(source_pos) != len(base_pos):  # pragma: no cover - guarded above
        raise InputError(f"{len(source_pos)} source positions vs {len(base_pos)} base positions")
    return base_pos, source_pos


class PatchActivations(Intervention):
    """Replace activations at hook points and positions with a source input's.

    Positions are matched between base and source by role (the k-th image token of the
    base gets the k-th image token of the source); each mismatch is one clear error at
    bind time. Patching acts at the prefill forward only.

    Args:
        hook_names: TL-style names (``blocks.{l}.hook_resid_pre`` ...; per head
            ``blocks.{l}.attn.hook_z``); or give ``layers`` and ``site`` instead.
        layers: the decoder layers: an int, a list of ints or ``"all"``.
        site: with ``layers``: ``resid_pre``, ``q``, ``k``, ``v``, ``z``, ``attn_out``,
            ``mlp_out`` or ``resid_post``.
        positions: ``"image"``, ``"question"``, ``"last"``, ``"text"``, ``"all"``,
            explicit positions, or :class:`ImageCells`.
        source: the source's :class:`~interp.inputs.Prepared` (needed to align positions
            and by :func:`~interp.analysis.patching.run_patched`; ``None`` means the
            source is laid out exactly like the base).
        source_values: the source's activations when recorded elsewhere, keyed like
            :meth:`source_key`.
        name: the prefix of the source's recordings (see :meth:`source_key`).
        heads: site ``z`` only: the attention heads to patch (an int or a list; None:
            every head).

    Raises:
        InterpError: both or neither of ``hook_names`` and ``layers``, a site that cannot
            be patched, or bad ``heads``.

    Example:
        ```python
        from interp.analysis.patching import run_patched

        clean = vlm.prepare("cat.png", "What colour is the cat?")
        corrupt = vlm.prepare("dog.png", "What colour is the cat?")
        patch = interp.PatchActivations(layers=[2, 3], site="resid_pre", positions="image")
        result = run_patched(vlm, corrupt, clean, patch)  # base, source, patches
        ```
    """

    # set by bind(): what the run resolved for one prompt
    _sites: list[Any]
    _base_positions: torch.Tensor
    _source_positions: torch.Tensor

    def __init__(
        self,
        hook_names: str | Iterable[str] | None = None,
        *,
        layers: Any = None,
        site: str = "resid_pre",
        positions: Any = "image",
        source=None,
        source_values: dict | None = None,
        name: str = "source",
        heads: Any = None,
    ):
        if hook_names is not None and layers is not None:
            raise InterpError("give hook_names or layers + site, not both")
        if hook_names is None and layers is None:
            raise InterpError("PatchActivations needs hook_names or layers (+ site)")
        if hook_names is None and site not in PATCH_SITES:
            raise InterpError(f"cannot patch site {site!r}; patchable sites: {', '.join(PATCH_SITES)}")
        self.hook_names = (
            None if hook_names is None else ([hook_names] if isinstance(hook_names, str) else list(hook_names))
        )
        if self.hook_names is not None and not self.hook_names:
            raise InterpError("PatchActivations needs at least one hook name")
        self.layers = layers if layers is not None else "all"
        self.site = site
        self.positions = positions
        self.source = source
        self.source_values = source_values
        self.name = name
        self.heads = None if heads is None else ([heads] if isinstance(heads, int) else list(heads))
        if self.heads is not None and (
            not self.heads or not all(isinstance(h, int) and not isinstance(h, bool) for h in self.heads)
        ):
            raise InterpError(f"heads must be a head index or a non-empty list of them, got {heads!r}")

    # -- binding ---------------------------------------------------------------

    def needs_source(self) -> bool:
        return self.source is None

    def with_source(self, source) -> PatchActivations:
        """This patch, reading from ``source`` (a Prepared)."""
        new = PatchActivations.__new__(PatchActivations)
        new.__dict__.update(self.__dict__)
        new.source = source
        return new

    def bind(self, n_layers: int, prepared) -> PatchActivations:
        bound = super().bind(n_layers, prepared)
        if self.hook_names is not None:
            points = [parse_hook_name(name, n_layers) for name in self.hook_names]
            for point in points:
                if point.site not in PATCH_SITES:
                    raise InterpError(
                        f"cannot patch {point.name}: patchable sites are "
                        + ", ".join(f"blocks.{{l}}.hook_{s}" for s in PATCH_SITES)
                    )
            bound._sites = sorted({(point.layer, point.site) for point in points})
        else:
            bound._sites = [(layer, self.site) for layer in resolve_layers(self.layers, n_layers)]
        bound.layers = sorted({layer for layer, _ in bound._sites})
        if self.heads is not None:
            if any(site != "z" for _, site in bound._sites):
                raise InterpError("heads= selects attention heads: it patches blocks.{l}.attn.hook_z (site 'z') only")
            if min(self.heads) < 0:
                raise InterpError(f"head {min(self.heads)} is out of range: heads count from 0")
        bound._base_positions, bound._source_positions = aligned_positions(self.positions, prepared, self.source)
        if self.source is not None and self.source.input_ids.shape[0] != prepared.input_ids.shape[0]:
            raise InputError(
                f"the source has batch {self.source.input_ids.shape[0]} but the base has "
                f"{prepared.input_ids.shape[0]}: give one source row per base row"
            )
        bound.source = None  # positions are resolved; do not ship the source's inputs with remote traces
        return bound

    def sites(self):
        return list(self._sites)

    def first_row(self, layer, site) -> int | None:
        """The first prefill row this patch changes: its first base position (None: none)."""
        return int(self._base_positions.min()) if self._base_positions.numel() else None

    @staticmethod
    def source_key(layer: int, site: str, name: str = "source") -> tuple:
        """Where the source's activation at ``(layer, site)`` lives in ``ctx.records``."""
        return (f"{name}:{hook_name(layer, site)}", layer, 0)

    def source_recorder(self) -> RecordSource:
        """The intervention that records what this (bound) patch needs, on the source run."""
        return RecordSource(self._sites, self.source_name)

    @property
    def source_name(self) -> str:
        """The name the source run's recordings are stored under."""
        return self.name or "source"

    # -- in the trace ------------------------------------------------------------

    def _source_value(self, layer, site, ctx: StepContext):
        key = self.source_key(layer, site, self.source_name)
        if key in ctx.records:
            return ctx.records[key]
        if self.source_values is not None and key in self.source_values:
            return self.source_values[key]
        raise InterpError(
            f"no source activation {key[0]!r} to patch from: run the source first "
            "(interp.analysis.patching.run_patched) or pass source_values"
        )

    def edit_hidden(self, layer, site, hidden, ctx: StepContext):
        if ctx.step != 0 or self._base_positions.numel() == 0:
            return hidden
        local = self._base_positions.to(hidden.device) - ctx.offset
        keep = (local >= 0) & (local < hidden.shape[1])
        if not bool(keep.any()):
            return hidden
        source = self._source_value(layer, site, ctx)
        source_rows = self._source_positions.to(source.device)[keep.to(source.device)]
        new = hidden.clone()
        if self.heads is None:
            new[:, local[keep]] = source[:, source_rows].to(hidden.device, hidden.dtype)
            return new
        if hidden.ndim != 4:
            raise InterpError(f"patching heads needs the per-head value [batch, seq, heads, head_dim] at {site}")
        if max(self.heads) >= hidden.shape[2]:
            raise InterpError(f"head {max(self.heads)} is out of range 0..{hidden.shape[2] - 1}")
        heads = torch.tensor(self.heads, device=hidden.device)
        rows = local[keep].to(hidden.device)
        new[:, rows[:, None], heads[None, :]] = source[:, source_rows[:, None], heads.to(source.device)[None, :]].to(
            hidden.device, hidden.dtype
        )
        return new

    def at_site(self, layer, site, value, ctx: StepContext):
        return self.edit_hidden(layer, site, value, ctx)


class RecordSource(Intervention):
    """Records the whole activation at ``sites`` under :meth:`PatchActivations.source_key`
    (run it on the source input, before the patched base run)."""

    def __init__(self, sites, name: str = "source"):
        self._sites = sorted(set(sites))
        self.layers = sorted({layer for layer, _ in self._sites})
        self.name = name

    def bind(self, n_layers: int, prepared) -> RecordSource:
        return self  # the sites are already resolved by the patch that made this recorder

    def sites(self):
        return list(self._sites)

    def recorded_as(self, layer, site):
        # the whole activation at the site, as RecordResidual records it with positions=None
        return ("residual", layer, site, None), PatchActivations.source_key(layer, site, self.name or "source")[:2]

    def edit_hidden(self, layer, site, hidden, ctx: StepContext):
        if ctx.step == 0:
            ctx.records[PatchActivations.source_key(layer, site, self.name or "source")] = hidden.detach().clone()
        return hidden

    def at_site(self, layer, site, value, ctx: StepContext):
        return self.edit_hidden(layer, site, value, ctx)
