"""Attention knockout: block attention edges from some tokens to others.

As in "Cross-modal Information Flow in Multimodal LLMs" (Zhang et al., 2025): over a
window of layers, the queries at ``src`` may not attend to the keys at ``dst``
(e.g. last token -> image, question -> image). Implemented by editing the mask the
attention function receives, so it works with eager and SDPA attention alike.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Intervention, StepContext, resolve_positions


class AttentionKnockout(Intervention):
    """Block attention from ``src`` queries to ``dst`` keys at ``layers``.

    Edits the mask the attention function receives, so it works with eager and SDPA
    attention alike.

    Args:
        src: the query positions: ``"last"``, ``"image"``, ``"text"``, ``"question"``,
            ``"all"`` or explicit positions.
        dst: the key positions, chosen the same way.
        layers: the decoder layers: an int, an iterable of ints or ``"all"``.
        every_step: also block while decoding, where only the new token's row exists:
            ``src="last"`` (or ``"all"``) then blocks the new token's edges.

    Example:
        ```python
        # the last token may not read the image in layers 0-3
        knockout = interp.AttentionKnockout(src="last", dst="image", layers=range(4))
        result = vlm.run(sample, knockout)
        ```
    """

    def __init__(self, src: Any, dst: Any, layers: Any, every_step: bool = False):
        self.src = src
        self.dst = dst
        self.layers = layers
        self.every_step = every_step

    def _bind(self, prepared) -> None:
        where = dict(
            image_positions=prepared.image_positions,
            question_positions=prepared.question_positions,
            seq_len=prepared.seq_len,
        )
        self._src = resolve_positions(self.src, what="src", **where)
        self._src_all = self.src == "all"
        self._dst = resolve_positions(self.dst, what="dst", **where)
        if isinstance(self._dst, str):  # "last" as a destination: the last prompt token
            self._dst = torch.tensor([prepared.seq_len - 1])
        self._seq_len = prepared.seq_len

    def first_row(self, layer, site) -> int | None:
        """The first prefill row this knockout can change: its first query row (None: no query rows)."""
        if isinstance(self._src, str):
            return self._seq_len - 1
        return int(self._src.min()) if self._src.numel() else None

    def sites(self):
        return [(layer, "attn_pattern") for layer in self.layers]

    def edit_mask(self, layer, mask, ctx: StepContext) -> None:
        window = mask.window
        if isinstance(self._src, str) or (self._src_all and ctx.step > 0):
            rows = torch.tensor([len(window) - 1])
        else:
            rows = ctx.local_rows(self._src, len(window)) if ctx.step == 0 else torch.empty(0, dtype=torch.long)
        cols = self._dst[self._dst < int(window[-1]) + 1]
        mask.block(rows, cols)
