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

Both paths run the same :class:`ContrastiveMask` objects. ``mode="fast"`` continues
from the sample's clean pass at the review layer (the masks read the clean pass's
attention below it), all v1 configurations of a sample batched together;
``mode="naive"`` (also the path for ``remote=``) runs each in a full pass. The tests
check that both give the same result. Scoring is teacher-forced (exact greedy
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

from ..engine.clean_pass import supports_prefix_reuse
from ..engine.restarts import continue_from
from ..engine.unembedding import unembed
from ..errors import InterpError
from ..interventions import ContrastiveMask, Plan
from ..interventions.contrastive import DISTANCES, bottom_fraction, contrast
from ..options import MODES
from .clean import SamplePass, sample_pass
from .items import as_items
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


def contrastive_eval(
    vlm,
    samples: Any,
    *,
    review_layer: int,
    fusion_layers: list[int] | None = None,
    rhos=(0.1, 0.2, 0.3, 0.5),
    distances=DISTANCES,
    primary: tuple[str, float, str] = ("all", 0.2, "jsd"),
    crop: bool = True,
    crop_fraction: float = 0.2,
    mode: str = "auto",
    limit: int | None = None,
    remote: bool | str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Rows ``item, kind, method, candidates, rho, distance, pre_layer, correct, logprob``
    (``method`` is ``baseline``, ``v1`` or ``v2``)."""
    setup = ContrastiveSetup.build(vlm, review_layer, fusion_layers, rhos, distances, primary, mode, remote)
    items = as_items(samples, limit)
    rows = []
    for item in tqdm(items, desc="contrastive attention", unit="sample", disable=not progress):
        sp = sample_pass(vlm, item, restartable=setup.fast, remote=remote, residual_layers=None)
        rows.extend(contrastive_rows(vlm, sp, setup, crop=crop, crop_fraction=crop_fraction, remote=remote))
    return contrastive_frame(rows, vlm, setup)


class ContrastiveSetup:
    """The configurations a contrastive evaluation runs, checked once."""

    def __init__(self, review_layer, reference, sets, configs, primary, fast):
        self.review_layer, self.reference, self.sets = review_layer, reference, sets
        self.configs, self.primary, self.fast = configs, primary, fast

    @classmethod
    def build(cls, vlm, review_layer, fusion_layers, rhos, distances, primary, mode, remote) -> ContrastiveSetup:
        n_layers = vlm.n_layers
        if mode not in MODES:
            raise InterpError(f"mode must be one of {MODES}, got {mode!r}")
        for distance in distances:
            if distance not in DISTANCES:
                raise InterpError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if not 1 <= review_layer < n_layers:
            raise InterpError(f"the review layer must be in 1..{n_layers - 1}, got {review_layer}")
        reference = review_layer - 1
        sets = candidate_sets(n_layers, reference, fusion_layers)
        if not sets:
            raise InterpError(f"no layer lies before the reference layer {reference}: pick a later review layer")
        reason = supports_prefix_reuse(vlm) or ("remote execution" if remote not in (None, False) else None)
        if mode == "fast" and reason:
            raise InterpError(f"the fast path does not apply here ({reason}); use mode='naive'")
        fast = mode == "fast" or (mode == "auto" and reason is None)
        return cls(review_layer, reference, sets, configurations(sets, rhos, distances, primary), tuple(primary), fast)

    def mask(self, name: str, rho: float, distance: str, last: int) -> ContrastiveMask:
        return ContrastiveMask(self.review_layer, candidates=self.sets[name], rho=rho, distance=distance, query=[last])


def contrastive_frame(rows: list[dict], vlm, setup: ContrastiveSetup) -> pd.DataFrame:
    out = pd.DataFrame(rows)
    out.attrs.update(
        {
            "review_layer": setup.review_layer,
            "reference_layer": setup.reference,
            "mode": "fast" if setup.fast else "naive",
            "candidate_sets": setup.sets,
            "primary": list(setup.primary),
            "model": vlm.name,
        }
    )
    return out


def contrastive_rows(
    vlm, sp: SamplePass, setup: ContrastiveSetup, *, crop: bool = True, crop_fraction: float = 0.2, remote=None
) -> list[dict]:
    """One sample's rows from its clean pass (baseline, every v1 configuration, v2)."""
    item, tf = sp.item, sp.tf
    base = {"item": item.id, "kind": item.kind}
    logprob, match = tf.score(sp.clean.logits)
    rows = [
        {
            **base,
            "method": "baseline",
            "candidates": "",
            "rho": 0.0,
            "distance": "",
            "pre_layer": -1,
            "correct": float(match),
            "logprob": logprob,
        }
    ]
    masks = [setup.mask(name, rho, distance, sp.last) for name, rho, distance in setup.configs]
    results = _v1_fast(vlm, sp, masks, setup.review_layer) if setup.fast else _v1_naive(vlm, sp, masks, remote)
    for (name, rho, distance), (pre, logits) in zip(setup.configs, results):
        logprob, match = tf.score(logits)
        rows.append(
            {
                **base,
                "method": "v1",
                "candidates": name,
                "rho": rho,
                "distance": distance,
                "pre_layer": pre,
                "correct": float(match),
                "logprob": logprob,
            }
        )
    if crop:
        name, rho, distance = setup.primary
        attention = sp.attention()
        pre, c = contrast(attention[setup.reference], {i: attention[i] for i in setup.sets[name]}, distance)
        cropped = crop_region(item.image, sp.prepared, c, crop_fraction)
        two = teacher_force(vlm, vlm.prepare([item.image, cropped], item.question), item.answers[0])
        run = vlm.run(two.prepared, logit_positions=two.positions.tolist(), remote=remote, count_as="crop_forward")
        logprob, match = two.score(run.logits[0])
        rows.append(
            {
                **base,
                "method": "v2",
                "candidates": name,
                "rho": crop_fraction,
                "distance": distance,
                "pre_layer": pre,
                "correct": float(match),
                "logprob": logprob,
            }
        )
    return rows


def _v1_fast(vlm, sp: SamplePass, masks, review_layer):
    bound = [Plan(mask).bind(vlm, sp.tf.prepared) for mask in masks]
    hidden, contexts = continue_from(vlm, sp.clean, review_layer, bound)
    logits = unembed(vlm, hidden)
    return [(int(ctx.records[("contrastive_pre_layer", review_layer, 0)]), row) for ctx, row in zip(contexts, logits)]


def _v1_naive(vlm, sp: SamplePass, masks, remote):
    out = []
    for mask in masks:
        run = vlm.run(sp.tf.prepared, mask, logit_positions=sp.tf.positions.tolist(), remote=remote)
        out.append((int(run.record("contrastive_pre_layer", mask.review_layer)), run.logits[0]))
    return out


def crop_region(image, prepared, c: torch.Tensor, fraction: float = 0.2) -> Image.Image:
    """The image cropped to the bounding box (plus one cell) of the grid cells holding the
    top ``fraction`` of ``C``, resized back to the image's size."""
    from ..inputs import load_image

    image = load_image(image)
    grid = prepared.layouts[0].grid
    rows, cols = grid.shape
    keep = ~bottom_fraction(c, 1.0 - fraction) if fraction < 1 else torch.ones_like(c, dtype=torch.bool)
    cells = [(r, q) for r, q in grid.cells_of(prepared.image_positions)[keep.cpu()].tolist() if r >= 0]
    if not cells:
        return image.copy()
    r0 = max(0, min(r for r, _ in cells) - 1)
    r1 = min(rows, max(r for r, _ in cells) + 2)
    c0 = max(0, min(q for _, q in cells) - 1)
    c1 = min(cols, max(q for _, q in cells) + 2)
    width, height = image.size
    box = (
        int(c0 * width / cols),
        int(r0 * height / rows),
        int(round(c1 * width / cols)),
        int(round(r1 * height / rows)),
    )
    return image.crop(box).resize(image.size, Image.BICUBIC)


def compare_to_baseline(rows: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per configuration: accuracy, baseline accuracy, difference with a paired bootstrap
    95% CI, McNemar's exact p-value, and the number of items."""
    base = rows[rows.method == "baseline"].set_index("item").correct
    out = []
    for (method, name, rho, distance), group in rows[rows.method != "baseline"].groupby(
        ["method", "candidates", "rho", "distance"], sort=False
    ):
        group = group.set_index("item").correct
        paired = base.loc[group.index]
        diff, low, high = paired_bootstrap_diff(paired.values, group.values, n_boot=n_boot, seed=seed)
        test = mcnemar_exact(paired.values, group.values)
        out.append(
            {
                "method": method,
                "candidates": name,
                "rho": rho,
                "distance": distance,
                "n": int(group.size),
                "accuracy": float(group.mean()),
                "baseline": float(paired.mean()),
                "diff": diff,
                "diff_low": low,
                "diff_high": high,
                "p_value": test["p_value"],
                "gained": test["b_only"],
                "lost": test["a_only"],
            }
        )
    return pd.DataFrame(out)
