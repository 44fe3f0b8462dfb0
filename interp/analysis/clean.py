"""One clean pass per sample, shared by every analysis of it.

The masking sweep's baseline and restart prefix, the attention maps, the layer
distances, the logit lens, and the contrastive method's baseline and attention all
read the same forward: the prompt with its reference answer appended (teacher
forcing), run once with two recorders —

* the last prompt token's head-mean attention over the image tokens at every layer
  (``attention`` records; causal attention makes it the same as in the prompt alone),
* the residual stream after every layer at the scored positions (the logit lens).

On local models the pass is captured restartable (every layer's inputs and keys/values
kept, see :mod:`interp.engine.prefix`, so row-level restarts need no second forward); on
the naive and remote paths it is one plain run with the same recorders.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.prefix import CleanPass, capture
from ..hooks import hook_name
from ..interventions import RecordAttention, RecordResidual
from .items import Item
from .teacher import TeacherForced, teacher_force

ATTENTION = "attention"


@dataclass
class SamplePass:
    """A sample, its prompt, its teacher-forced inputs and their clean pass."""

    item: Item
    prepared: object
    tf: TeacherForced
    clean: CleanPass

    @property
    def last(self) -> int:
        """The last prompt token (the query of the paper's attention analyses)."""
        return self.tf.last_prompt_position

    def attention(self) -> dict[int, torch.Tensor]:
        """``{layer: (n_image_tokens,)}``: the last prompt token's head-mean image attention."""
        return {key[1]: value[0, 0].float() for key, value in self.clean.records.items() if key[0] == ATTENTION}

    def residuals(self) -> tuple[list[int], torch.Tensor]:
        """``(layers, [n_layers, n_positions, d])``: the residual after each layer at the scored positions."""
        found = sorted((key[1], value) for key, value in self.clean.records.items() if key[0] != ATTENTION)
        return [layer for layer, _ in found], torch.cat([value for _, value in found])


def recorders(vlm, tf: TeacherForced, *, attention_layers="all", residual_layers="all") -> list:
    """The clean pass's recorders (either may be None to skip it)."""
    out = []
    if attention_layers is not None:
        out.append(RecordAttention(attention_layers, query=[tf.last_prompt_position], heads="mean", keys="image",
                                   name=ATTENTION))
    if residual_layers is not None:
        from ..interventions.base import resolve_layers

        names = [hook_name(layer, "resid_post") for layer in resolve_layers(residual_layers, vlm.n_layers)]
        out.append(RecordResidual(names, positions=tf.positions.tolist()))
    return out


def sample_pass(vlm, item: Item, *, restartable: bool, remote=None, attention_layers="all",
                residual_layers="all") -> SamplePass:
    """Prepare ``item``, append its reference answer, and run the clean pass once."""
    prepared = vlm.prepare(item.image, item.question)
    tf = teacher_force(vlm, prepared, item.answers[0])
    clean = capture(vlm, tf.prepared, tf.positions,
                    recorders(vlm, tf, attention_layers=attention_layers, residual_layers=residual_layers),
                    restartable=restartable, remote=remote, keep_kv=restartable)
    return SamplePass(item, prepared, tf, clean)
