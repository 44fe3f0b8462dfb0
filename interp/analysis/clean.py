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

:func:`sample_passes` runs several samples' clean passes as ONE right-padded forward
(:func:`interp.engine.batched.capture_batch`), restartable or not, and cuts it back into one
:class:`SamplePass` per sample with the padding removed — the restartable capture included
(its layer inputs and keys/values), so the sweep's restarts and everything downstream read a
batched pass exactly as one captured alone. Equal to :func:`sample_pass` within float
tolerance (the tests: 1e-5 of each tensor's scale in float32; padding changes the order of
SDPA's and the batched matmuls' reductions, not what is computed). Families whose adapter does not say
``batched_forward``, and remote runs, fall back to one pass per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.batched import capture_batch
from ..engine.clean_pass import CleanPass
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
        out.append(
            RecordAttention(
                attention_layers, query=[tf.last_prompt_position], heads="mean", keys="image", name=ATTENTION
            )
        )
    if residual_layers is not None:
        from ..interventions.base import resolve_layers

        names = [hook_name(layer, "resid_post") for layer in resolve_layers(residual_layers, vlm.n_layers)]
        out.append(RecordResidual(names, positions=tf.positions.tolist()))
    return out


def sample_pass(
    vlm, item: Item, *, restartable: bool, remote=None, attention_layers="all", residual_layers="all"
) -> SamplePass:
    """Prepare ``item``, append its reference answer, and run the clean pass once."""
    return sample_passes(
        vlm,
        [item],
        restartable=restartable,
        remote=remote,
        attention_layers=attention_layers,
        residual_layers=residual_layers,
    )[0]


def sample_passes(
    vlm, items: list[Item], *, restartable: bool, remote=None, attention_layers="all", residual_layers="all"
) -> list[SamplePass]:
    """:func:`sample_pass` for each of ``items``, their clean passes run as one padded forward
    where the family batches (see the module docstring), else one at a time."""
    prepared = [vlm.prepare(item.image, item.question) for item in items]
    tfs = [teacher_force(vlm, p, item.answers[0]) for p, item in zip(prepared, items)]
    cleans = capture_batch(
        vlm,
        [tf.prepared for tf in tfs],
        [tf.positions for tf in tfs],
        [recorders(vlm, tf, attention_layers=attention_layers, residual_layers=residual_layers) for tf in tfs],
        restartable=restartable,
        remote=remote,
        keep_kv=restartable,
    )
    return [SamplePass(item, p, tf, clean) for item, p, tf, clean in zip(items, prepared, tfs, cleans)]
