"""Early output (logit lens): read the answer from an intermediate layer.

For every layer ``l``, the residual stream after ``l`` (``blocks.{l}.hook_resid_post``)
at the scored positions of a teacher-forced pass goes through the model's own final
norm and unembedding; the result is scored like the real output (greedy match of the
reference answer and its log-probability). At the last layer this is exactly the
model's output.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ..engine.unembedding import unembed
from .clean import SamplePass, sample_pass
from .items import as_items


def early_output(
    vlm,
    samples: Any,
    *,
    layers: Any = "all",
    limit: int | None = None,
    remote: bool | str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per (item, layer): ``correct`` (greedy match through the final norm and
    unembedding) and ``logprob`` of the reference answer read at that layer."""
    items = as_items(samples, limit)
    rows = []
    for item in tqdm(items, desc="early output", unit="sample", disable=not progress):
        sp = sample_pass(vlm, item, restartable=False, remote=remote, attention_layers=None, residual_layers=layers)
        rows.extend(lens_rows(vlm, sp))
    return lens_frame(rows, vlm)


def lens_frame(rows: list[dict], vlm) -> pd.DataFrame:
    out = pd.DataFrame(rows)
    out.attrs["model"] = vlm.name
    return out


def lens_rows(vlm, sp: SamplePass) -> list[dict]:
    """One sample's logit-lens rows from its clean pass: every layer unembedded in one call."""
    layers, hidden = sp.residuals()
    logits = unembed(vlm, hidden.to(vlm.device, vlm.dtype))
    rows = []
    for layer, layer_logits in zip(layers, logits):
        logprob, match = sp.tf.score(layer_logits)
        rows.append(
            {"item": sp.item.id, "kind": sp.item.kind, "layer": layer, "correct": float(match), "logprob": logprob}
        )
    return rows
