"""The intervention protocol and the per-step context handed to interventions in a trace.

An intervention says *where* (a list of ``(layer, site)`` pairs, see
:mod:`interp.hooks`) and *what*. Selectors such as "the last token" or "the
question tokens" are resolved to positions by :meth:`Intervention.bind` before the
trace starts, so nothing inside the trace needs the processor or the tokenizer.

*What* is said through three methods, so that one engine can run every
intervention two ways — through nnsight (:mod:`interp.engine.plan`, the
remote-safe path) and by continuing from a captured clean pass
(:mod:`interp.engine.prefix`, the fast path) — without knowing its class:

* :meth:`Intervention.edit_hidden` — a residual-stream value (``resid_pre``,
  ``attn_out``, ``mlp_out``, ``resid_post``, ``final_norm``) in, the value to
  continue with out (recorders store it and return it unchanged);
* :meth:`Intervention.edit_mask` — the attention edges of a layer
  (an :class:`~interp.interventions.runtime.EditableMask`), for ``attn_pattern``;
* :meth:`Intervention.before_restart` — on the fast path, for a site in a layer
  below the restart layer (which ran clean): a recorder copies what the clean pass
  recorded there; an edit there cannot be honoured and says so.

:meth:`Intervention.at_site` (the nnsight path's entry point) routes to the first
two; recorders that need the attention call itself (queries and keys) override it.
"""

from __future__ import annotations

import copy
from typing import Any

from typing_extensions import Self

import torch

from ..errors import InterpError
from ..hooks import check_layer


class StepContext:
    """What an intervention knows inside the trace, for one forward (step) of the run.

    ``offset`` is the absolute position of the first row of the current hidden
    states (0 at prefill, ``prompt_len + step - 1`` while decoding); ``records`` is
    the dict that recordings go into and that later interventions may read.
    """

    def __init__(self, step: int, offset: int, image_positions, question_positions, seq_len: int, records: dict):
        self.step = step
        self.offset = offset
        self.image_positions = image_positions
        self.question_positions = question_positions
        self.seq_len = seq_len
        self.records = records

    @classmethod
    def of(cls, prepared: Any, records: dict, device: Any = None, *, step: int = 0, offset: int = 0) -> StepContext:
        """The context of a run of ``prepared`` (its prefill unless ``step``/``offset`` say
        otherwise), its token positions on ``device`` when given."""
        image, question = prepared.image_positions, prepared.question_positions
        if device is not None:
            image, question = image.to(device), question.to(device)
        return cls(step, offset, image, question, prepared.seq_len, records)

    def at(self, step: int, offset: int) -> StepContext:
        """The same run's context at generation ``step`` (window starting at ``offset``)."""
        return StepContext(step, offset, self.image_positions, self.question_positions, self.seq_len, self.records)

    def local_rows(self, positions, length: int):
        """Indices into the current window of those absolute ``positions`` it contains."""
        local = positions - self.offset
        return local[(local >= 0) & (local < length)]


def resolve_layers(layers: Any, n_layers: int) -> list[int]:
    """``"all"``, an int, a range or an iterable of ints -> sorted in-range layer list."""
    if isinstance(layers, str):
        if layers != "all":
            raise InterpError(f"layers must be an int, an iterable of ints or 'all', got {layers!r}")
        return list(range(n_layers))
    if isinstance(layers, int):
        layers = [layers]
    resolved = sorted({check_layer(layer, n_layers) for layer in layers})
    if not resolved:
        raise InterpError("an intervention needs at least one layer")
    return resolved


def resolve_positions(selector: Any, *, image_positions, question_positions, seq_len: int, what: str):
    """A token selector -> absolute positions (LongTensor), or the string ``"last"``.

    Selectors: ``"last"``, ``"image"``, ``"text"`` (every non-image token),
    ``"question"``, ``"all"``, or explicit positions (negative count from the end).
    """
    if isinstance(selector, str):
        if selector == "last":
            return "last"
        if selector == "image":
            return image_positions.clone()
        if selector == "question":
            return question_positions.clone()
        if selector == "all":
            return torch.arange(seq_len)
        if selector == "text":
            keep = torch.ones(seq_len, dtype=torch.bool)
            keep[image_positions] = False
            return keep.nonzero().flatten()
        raise InterpError(
            f"unknown {what} selector {selector!r}; use 'last', 'image', 'text', 'question', 'all' or positions"
        )
    positions = torch.as_tensor(selector, dtype=torch.long).flatten()
    positions = torch.where(positions < 0, positions + seq_len, positions)
    if positions.numel() and (positions.min() < 0 or positions.max() >= seq_len):
        raise InterpError(f"{what} positions out of range for a sequence of {seq_len} tokens")
    return positions


class Intervention:
    """Base class. Subclasses set ``self.layers`` and implement :meth:`sites` / :meth:`at_site`."""

    #: apply at every generation step instead of only at the prefill forward
    every_step: bool = False
    #: key under which recordings are stored (recorders only)
    name: str | None = None
    #: the decoder layers it acts at: as given, then (bound) a checked sorted list
    layers: Any = ()

    def sites(self) -> list[tuple[int | None, str]]:
        raise NotImplementedError

    def bind(self, n_layers: int, prepared: Any) -> Self:
        """A copy with layers checked and token selectors resolved for ``prepared``."""
        bound = copy.copy(self)
        bound.layers = resolve_layers(self.layers, n_layers)
        bound._bind(prepared)
        return bound

    def _bind(self, prepared) -> None:
        """Resolve selectors against ``prepared`` (override when there are any)."""

    def active(self, ctx: StepContext) -> bool:
        return ctx.step == 0 or self.every_step

    def at_site(self, layer: int | None, site: str, value: Any, ctx: StepContext) -> Any:
        """The nnsight path: ``value`` is what nnsight holds at the site (the attention
        call's ``(args, kwargs)`` for ``attn_pattern``, a hidden-state tensor otherwise)."""
        if site == "attn_pattern":
            from .runtime import edit_attention_call

            assert layer is not None  # attention sites are inside a decoder layer
            return edit_attention_call(value, lambda mask: self.edit_mask(layer, mask, ctx))
        return self.edit_hidden(layer, site, value, ctx)

    def edit_hidden(self, layer: int | None, site: str, hidden: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """A residual-stream value ``(batch, window, d)`` -> the value to continue with."""
        raise InterpError(f"{type(self).__name__} does not act on {site} values")

    def edit_mask(self, layer: int, mask, ctx: StepContext) -> None:
        """Edit the attention edges of ``layer`` in place (see ``EditableMask``)."""
        raise InterpError(
            f"{type(self).__name__} reads the attention call itself at layer {layer}, which the "
            "fast path does not recompute; run it with mode='naive'"
        )

    def first_row(self, layer: int | None, site: str) -> int | None:
        """The first prefill position this can change (or read) at the site; None if none.
        The fast path recomputes only the rows from the earliest one on (default: every row)."""
        return 0

    def needs_source(self) -> bool:
        """Whether it reads another input's run and has none yet (a patch without its source):
        a session with a source run gives it that one (:meth:`with_source`)."""
        return False

    def with_source(self, source: Any) -> Intervention:
        """This intervention reading from ``source`` (a prepared input); others return themselves."""
        return self

    def source_recorder(self) -> Intervention | None:
        """Bound: what a source run must record for this intervention to read it (None: nothing)."""
        return None

    def recorded_as(self, layer: int | None, site: str):
        """Recorders: ``(spec, key)`` — what this site records, comparable across runs
        (``spec``), and the ``records`` key it stores it under. None for edits."""
        return None

    def before_restart(self, layer: int | None, site: str, clean, ctx: StepContext) -> None:
        """Fast path: this site lies in a layer below the restart layer, which ran clean.

        ``clean`` is the :class:`~interp.engine.prefix.CleanPass` the run continues from.
        A recorder copies what the clean pass recorded at the same spec; anything else
        would have changed the prefix, so it is refused."""
        found = self.recorded_as(layer, site)
        if found is None:
            raise InterpError(
                f"{type(self).__name__} acts at layer {layer} ({site}), before the restart layer; "
                "restart at or below its first layer"
            )
        spec, key = found
        value = clean.recorded(spec)
        if value is None:
            raise InterpError(
                f"the clean pass did not record what {type(self).__name__} reads at layer {layer} ({site}); "
                "record it in the clean pass or run with mode='naive'"
            )
        ctx.records[(key[0], key[1], ctx.step)] = value

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def image_token_subset(tokens: Any, ctx: StepContext) -> torch.Tensor:
    """Absolute positions of the selected image tokens (``tokens`` may be a callable of ``ctx``)."""
    if callable(tokens):
        tokens = tokens(ctx)
    if tokens is None:
        return ctx.image_positions
    tokens = torch.as_tensor(tokens)
    if tokens.dtype == torch.bool:
        return ctx.image_positions[tokens.to(ctx.image_positions.device)]
    return ctx.image_positions[tokens.long().to(ctx.image_positions.device)]


def check_token_subset(tokens: Any, n_image_tokens: int) -> None:
    """One clear error for a static subset that does not fit the image tokens."""
    if tokens is None or callable(tokens):
        return
    tokens = torch.as_tensor(tokens)
    if tokens.dtype == torch.bool:
        if tokens.numel() != n_image_tokens:
            raise InterpError(
                f"boolean token mask has {tokens.numel()} entries but the prompt has {n_image_tokens} image tokens"
            )
        return
    if tokens.numel() and (tokens.min() < -n_image_tokens or tokens.max() >= n_image_tokens):
        raise InterpError(f"image-token indices must be in 0..{n_image_tokens - 1}")
