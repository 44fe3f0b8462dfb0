"""Evaluating contrastive attention masking against the greedy baseline.

For each sample: the clean pass (baseline score and the last prompt token's attention
at every layer), then each configuration of the method:

* **v1** — :class:`~interp.interventions.ContrastiveMask`: reference layer
  ``review - 1``, pre-layer ``i*`` = the candidate farthest from it (JSD or Hellinger)
  within a candidate set (``all``, ``shallow``, ``deep``, ``fusion`` layers), the
  bottom-``rho`` image tokens by ``C = max(A_r - A_i*, 0)`` scaled to ~0 at the input of
  the review layer; swept over ``rho``;
* **v2** — crop the high-``C`` region (the cells of the top ``crop_fraction`` of ``C``,
  their bounding box plus one cell of margin) and answer from the original image plus
  the crop (two images in one prompt).

``mode="fast"`` computes ``C`` from the clean pass and restarts only the layers from
the review layer on, all v1 configurations of a sample batched together; the result
equals running :class:`ContrastiveMask` in a full pass (``mode="naive"``, also the
path for ``remote=``), which the tests check. Scoring is teacher-forced (exact greedy
match and log-probability; see :mod:`interp.analysis.teacher`).

:func:`compare_to_baseline` turns the rows into the paired comparison: accuracy
difference with a paired bootstrap CI and McNemar's exact p-value per configuration.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..errors import InterpError
from ..interventions import ContrastiveMask, Plan, RecordAttention, ScaleImageTokens
from ..interventions.contrastive import bottom_fraction, contrast
from .items import as_items
from .prefix import capture, continue_from, supports_prefix_reuse
from .stats import mcnemar_exact, paired_bootstrap_diff
from .teacher import teacher_force


def candidate_sets(n_layers: int, reference_layer: int, fusion_layers: list[int] | None = None) -> dict[str, list[int]]:
    """The paper's candidate sets for the pre layer: all layers before the reference, the
    shallow half, the deep half, and the detected fusion layers (when any)."""
    before = list(range(reference_layer))
    half = max(1, n_layers // 2)
    sets = {"all": before, "shallow": [l for l in before if l < half], "deep": [l for l in before if l >= half]}
    fusion = [l for l in (fusion_layers or []) if l < reference_layer]
    if fusion:
        sets["fusion"] = fusion
    return {name: layers for name, layers in sets.items() if layers}


def configurations(sets: dict[str, list[int]], rhos, distances, primary: tuple[str, float, str]) -> list[tuple]:
    """``(candidates, rho, distance)`` triples: the rho sweep at the primary candidates and
    distance, every candidate set and distance at the primary rho (no duplicates)."""
    base_set, base_rho, base_distance = primary
    configs = [(base_set, rho, base_distance) for rho in rhos]
    configs += [(name, base_rho, base_distance) for name in sets]
    configs += [(base_set, base_rho, distance) for distance in distances]
    seen, out = set(), []
    for config in configs:
        if config not in seen and config[0] in sets:
            seen.add(config)
            out.append(config)
    return out


def contrastive_eval(vlm, samples: Any, *, review_layer: int, fusion_layers: list[int] | None = None,
                     rhos=(0.1, 0.2, 0.3, 0.5), distances=("jsd", "hellinger"),
                     primary: tuple[str, float, str] = ("all", 0.2, "jsd"), crop: bool = True,
                     crop_fraction: float = 0.2, mode: str = "auto", limit: int | None = None,
                     remote: bool | str | None = None, progress: bool = True) -> pd.DataFrame:
    """Rows ``item, kind, method, candidates, rho, distance, pre_layer, correct, logprob``
    (``method`` is ``baseline``, ``v1`` or ``v2``)."""
    n_layers = vlm.n_layers
    if not 1 <= review_layer < n_layers:
        raise InterpError(f"the review layer must be in 1..{n_layers - 1}, got {review_layer}")
    reference = review_layer - 1
    sets = candidate_sets(n_layers, reference, fusion_layers)
    if not sets:
        raise InterpError(f"no layer lies before the reference layer {reference}: pick a later review layer")
    configs = configurations(sets, rhos, distances, primary)
    reason = supports_prefix_reuse(vlm) or ("remote execution" if remote not in (None, False) else None)
    if mode == "fast" and reason:
        raise InterpError(f"the fast path does not apply here ({reason}); use mode='naive'")
    fast = mode == "fast" or (mode == "auto" and reason is None)
    items = as_items(samples, limit)
    rows = []
    for item in tqdm(items, desc="contrastive attention", unit="sample", disable=not progress):
        prepared = vlm.prepare(item.image, item.question)
        tf = teacher_force(vlm, prepared, item.answers[0])
        positions = tf.positions.tolist()
        last = tf.last_prompt_position
        clean = vlm.run(tf.prepared, RecordAttention("all", query=[last]), logit_positions=positions, remote=remote)
        attention = {layer: clean.record("attention", layer)[0, 0].float() for layer in clean.layers("attention")}
        base = {"item": item.id, "kind": item.kind}
        logprob, match = tf.score(clean.logits[0])
        rows.append({**base, "method": "baseline", "candidates": "", "rho": 0.0, "distance": "", "pre_layer": -1,
                     "correct": float(match), "logprob": logprob})
        if fast:
            results = _v1_fast(vlm, tf, attention, configs, sets, review_layer, reference)
        else:
            results = _v1_naive(vlm, tf, configs, sets, review_layer, last, remote)
        for (name, rho, distance), (pre, logits) in zip(configs, results):
            logprob, match = tf.score(logits)
            rows.append({**base, "method": "v1", "candidates": name, "rho": rho, "distance": distance,
                         "pre_layer": pre, "correct": float(match), "logprob": logprob})
        if crop:
            name, rho, distance = primary
            pre, c = contrast(attention[reference], {i: attention[i] for i in sets[name]}, distance)
            cropped = crop_region(item.image, prepared, c, crop_fraction)
            two = teacher_force(vlm, vlm.prepare([item.image, cropped], item.question), item.answers[0])
            run = vlm.run(two.prepared, logit_positions=two.positions.tolist(), remote=remote)
            logprob, match = two.score(run.logits[0])
            rows.append({**base, "method": "v2", "candidates": name, "rho": crop_fraction, "distance": distance,
                         "pre_layer": pre, "correct": float(match), "logprob": logprob})
    out = pd.DataFrame(rows)
    out.attrs.update({"review_layer": review_layer, "reference_layer": reference, "mode": "fast" if fast else "naive",
                      "candidate_sets": sets, "primary": list(primary), "model": vlm.name})
    return out


def _v1_fast(vlm, tf, attention, configs, sets, review_layer, reference):
    prefix = capture(vlm, tf.prepared, tf.positions)
    variants, pres = [], []
    for name, rho, distance in configs:
        pre, c = contrast(attention[reference], {i: attention[i] for i in sets[name]}, distance)
        drop = bottom_fraction(c, rho)
        variants.append(Plan(ScaleImageTokens(review_layer, 1e-9, tokens=drop)).bind(vlm, tf.prepared))
        pres.append(pre)
    logits = continue_from(vlm, prefix, tf.prepared, review_layer, variants)
    return list(zip(pres, logits))


def _v1_naive(vlm, tf, configs, sets, review_layer, last, remote):
    out = []
    for name, rho, distance in configs:
        mask = ContrastiveMask(review_layer, candidates=sets[name], rho=rho, distance=distance, query=[last])
        run = vlm.run(tf.prepared, mask, logit_positions=tf.positions.tolist(), remote=remote)
        out.append((int(run.record("contrastive_pre_layer", review_layer)), run.logits[0]))
    return out


def crop_region(image, prepared, c: torch.Tensor, fraction: float = 0.2) -> Image.Image:
    """The image cropped to the bounding box (plus one cell) of the grid cells holding the
    top ``fraction`` of ``C``, resized back to the image's size."""
    from ..inputs import load_image

    image = load_image(image)
    grid = prepared.layouts[0].grid
    rows, cols = grid.shape
    keep = ~bottom_fraction(c, 1.0 - fraction) if fraction < 1 else torch.ones_like(c, dtype=torch.bool)
    column_of = {int(p): i for i, p in enumerate(prepared.image_positions.tolist())}
    cells = [(r, q) for r in range(rows) for q in range(cols)
             if int(grid.positions[r, q]) >= 0 and bool(keep[column_of[int(grid.positions[r, q])]])]
    if not cells:
        return image.copy()
    r0 = max(0, min(r for r, _ in cells) - 1)
    r1 = min(rows, max(r for r, _ in cells) + 2)
    c0 = max(0, min(q for _, q in cells) - 1)
    c1 = min(cols, max(q for _, q in cells) + 2)
    width, height = image.size
    box = (int(c0 * width / cols), int(r0 * height / rows), int(round(c1 * width / cols)), int(round(r1 * height / rows)))
    return image.crop(box).resize(image.size, Image.BICUBIC)


def compare_to_baseline(rows: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per configuration: accuracy, baseline accuracy, difference with a paired bootstrap
    95% CI, McNemar's exact p-value, and the number of items."""
    base = rows[rows.method == "baseline"].set_index("item").correct
    out = []
    for (method, name, rho, distance), group in rows[rows.method != "baseline"].groupby(
            ["method", "candidates", "rho", "distance"], sort=False):
        group = group.set_index("item").correct
        paired = base.loc[group.index]
        diff, low, high = paired_bootstrap_diff(paired.values, group.values, n_boot=n_boot, seed=seed)
        test = mcnemar_exact(paired.values, group.values)
        out.append({"method": method, "candidates": name, "rho": rho, "distance": distance, "n": int(group.size),
                    "accuracy": float(group.mean()), "baseline": float(paired.mean()), "diff": diff,
                    "diff_low": low, "diff_high": high, "p_value": test["p_value"],
                    "gained": test["b_only"], "lost": test["a_only"]})
    return pd.DataFrame(out)
