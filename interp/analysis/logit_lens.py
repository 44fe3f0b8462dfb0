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

from ..hooks import hook_name
from ..interventions import RecordResidual
from ..interventions.base import resolve_layers
from .items import as_items
from .prefix import unembed
from .teacher import teacher_force


def early_output(vlm, samples: Any, *, layers: Any = "all", limit: int | None = None,
                 remote: bool | str | None = None, progress: bool = True) -> pd.DataFrame:
    """One row per (item, layer): ``correct`` (greedy match through the final norm and
    unembedding) and ``logprob`` of the reference answer read at that layer."""
    items = as_items(samples, limit)
    layer_list = resolve_layers(layers, vlm.n_layers)
    names = [hook_name(layer, "resid_post") for layer in layer_list]
    rows = []
    for item in tqdm(items, desc="early output", unit="sample", disable=not progress):
        tf = teacher_force(vlm, vlm.prepare(item.image, item.question), item.answers[0])
        run = vlm.run(tf.prepared, RecordResidual(names, positions=tf.positions.tolist()), remote=remote)
        for layer, name in zip(layer_list, names):
            hidden = run.record(name, layer).to(vlm.device, vlm.dtype)
            logits = unembed(vlm, hidden)[0]
            logprob, match = tf.score(logits)
            rows.append({"item": item.id, "kind": item.kind, "layer": layer, "correct": float(match),
                         "logprob": logprob})
    out = pd.DataFrame(rows)
    out.attrs["model"] = vlm.name
    return out
