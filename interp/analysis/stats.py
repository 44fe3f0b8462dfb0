"""Statistics the paper left out: bootstrap CIs over samples, paired comparisons, and
automatic detection of fusion and review layers.

Everything resamples *samples* (items), so the uncertainty is about which questions
were asked, and comparisons of two conditions on the same items are paired.

Small samples are called small: every table of CIs has a ``small_sample`` column (fewer
than :data:`SMALL_SAMPLE` items: a percentile bootstrap CI is rough there), and the
fusion detector calls no layer significant when the sample is too small for an exact
paired test to reach the family-wise alpha at all (:func:`min_paired_n`); its statement
then says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import InterpError


# Fewer samples than this and a bootstrap CI is flagged ``small_sample``.
SMALL_SAMPLE = 30


def min_p_value(n: int) -> float:
    """The smallest two-sided p-value an exact paired test (McNemar, sign test) can give on ``n`` items: ``2 / 2**n``."""
    return float(min(1.0, 2.0 * 0.5 ** int(n)))


def min_paired_n(alpha: float) -> int:
    """The fewest items with which an exact paired test can reach ``alpha`` at all."""
    n = 1
    while min_p_value(n) > alpha:
        n += 1
    return n


def bootstrap_mean_ci(values, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: percentile bootstrap CI of the mean over the given per-sample values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise InterpError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_bootstrap_diff(
    a, b, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean(b - a), low, high)`` over paired per-sample values (same items, same order)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise InterpError(f"paired values differ in length: {a.shape} vs {b.shape}")
    return bootstrap_mean_ci(b - a, n_boot=n_boot, level=level, seed=seed)


def mcnemar_exact(a, b) -> dict:
    """Exact (binomial) McNemar test of paired binary outcomes: ``{"b_only", "a_only", "p_value"}``.

    ``a_only`` counts items right under ``a`` only, ``b_only`` under ``b`` only; the
    two-sided p-value is ``min(1, 2 * P[X <= min])`` for ``X ~ Binomial(a_only + b_only, 1/2)``.
    """
    a = np.asarray(a, dtype=np.float64) >= 0.5
    b = np.asarray(b, dtype=np.float64) >= 0.5
    a_only = int((a & ~b).sum())
    b_only = int((b & ~a).sum())
    n = a_only + b_only
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n if n else 1.0
    return {"a_only": a_only, "b_only": b_only, "p_value": float(min(1.0, 2 * tail))}


def paired_sign_flip(a, b, *, n_resamples: int = 200_000, seed: int = 0) -> dict:
    """Two-sided paired test of ``mean(b - a) = 0`` by flipping the signs of the per-item
    differences: ``{"b_only", "a_only", "p_value", "exact"}``, where ``b_only`` / ``a_only``
    count the items where ``b`` / ``a`` is larger.

    For 0/1 outcomes this *is* McNemar's exact test (:func:`mcnemar_exact` is used). For
    per-item means (e.g. a question's accuracy over sampling seeds, 0.5 with one of two
    right) McNemar would need a threshold that decides ties one way; the sign-flip test uses
    the differences themselves: exact enumeration up to 20 non-zero differences, else
    ``n_resamples`` seeded random flips (p = (1 + hits) / (1 + n_resamples)). Written out here
    rather than ``scipy.stats.permutation_test``: scipy is not a dependency of interp, and
    the exact small-n case is a few lines of numpy."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all():
        return {**mcnemar_exact(a, b), "exact": True}
    d = b - a
    d = d[np.abs(d) > 1e-12]
    out = {"b_only": int((d > 0).sum()), "a_only": int((d < 0).sum())}
    if d.size == 0:
        return {**out, "p_value": 1.0, "exact": True}
    observed = abs(d.sum()) - 1e-9  # ties with the observed |sum| count as at least as extreme
    if d.size <= 20:
        signs = 1 - 2 * ((np.arange(2**d.size)[:, None] >> np.arange(d.size)) & 1)
        sums = np.abs(signs @ d)
        return {**out, "p_value": float((sums >= observed).mean()), "exact": True}
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_resamples, 20_000):
        signs = rng.choice((-1.0, 1.0), size=(min(20_000, n_resamples - start), d.size))
        hits += int((np.abs(signs @ d) >= observed).sum())
    return {**out, "p_value": float((1 + hits) / (1 + n_resamples)), "exact": False}


def layer_effects(
    sweep: pd.DataFrame, *, metric: str = "correct", n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Per (variant, layer): mean ``metric`` with a bootstrap CI, and the paired difference
    to the unmasked baseline with its CI (at ``level``) and a family-wise CI (Bonferroni over
    the layers of the variant), plus McNemar's p-value for binary metrics.

    Also per row: ``fw_alpha`` (the family-wise alpha, ``(1 - level) / layers``),
    ``min_p_value`` (the smallest p-value an exact paired test can reach with ``n``
    items) and ``small_sample`` (``n`` < :data:`SMALL_SAMPLE`)."""
    base = sweep[sweep.variant == "baseline"].set_index("item")[metric]
    if base.empty:
        raise InterpError("the sweep has no baseline rows")
    rows = []
    for variant, group in sweep[sweep.variant != "baseline"].groupby("variant", sort=False):
        n_layers = group.layer.nunique()
        fw_level = 1 - (1 - level) / max(1, n_layers)
        for layer, cell in group.groupby("layer"):
            cell = cell.set_index("item")[metric]
            paired = base.loc[cell.index]
            mean, low, high = bootstrap_mean_ci(cell.values, n_boot=n_boot, level=level, seed=seed)
            diff, d_low, d_high = paired_bootstrap_diff(
                paired.values, cell.values, n_boot=n_boot, level=level, seed=seed
            )
            _, fw_low, fw_high = paired_bootstrap_diff(
                paired.values, cell.values, n_boot=n_boot, level=fw_level, seed=seed
            )
            row = {
                "variant": variant,
                "layer": int(layer),
                "n": int(cell.size),
                "mean": mean,
                "low": low,
                "high": high,
                "diff": diff,
                "diff_low": d_low,
                "diff_high": d_high,
                "fw_low": fw_low,
                "fw_high": fw_high,
            }
            if metric == "correct":
                row["p_value"] = mcnemar_exact(paired.values, cell.values)["p_value"]
            row.update(
                fw_alpha=(1 - level) / max(1, n_layers),
                min_p_value=min_p_value(cell.size),
                small_sample=bool(cell.size < SMALL_SAMPLE),
            )
            rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class FusionFinding:
    """Detected fusion layers and review layer of one sweep variant, with the evidence."""

    variant: str
    baseline: float
    fusion_layers: list[int] = field(default_factory=list)
    review_layer: int | None = None
    significant_layers: list[int] = field(default_factory=list)
    statement: str = ""
    n: int | None = None  # items per layer (the fewest of any layer)
    too_small: bool = False  # n too small for the test to reach the family-wise alpha: nothing can be significant
    min_n: int | None = None  # the fewest items with which it can
    small_sample: bool = False  # n < SMALL_SAMPLE: the bootstrap CIs are rough

    def to_dict(self) -> dict:
        return {
            "variant": self.variant,
            "baseline": self.baseline,
            "fusion_layers": self.fusion_layers,
            "review_layer": self.review_layer,
            "significant_layers": self.significant_layers,
            "statement": self.statement,
            "n": self.n,
            "too_small": self.too_small,
            "min_n": self.min_n,
            "small_sample": self.small_sample,
        }


def _blocks(layers: list[int]) -> list[list[int]]:
    blocks: list[list[int]] = []
    for layer in sorted(layers):
        if blocks and layer == blocks[-1][-1] + 1:
            blocks[-1].append(layer)
        else:
            blocks.append([layer])
    return blocks


def detect_fusion(
    effects: pd.DataFrame,
    *,
    variant: str = "single",
    baseline: float | None = None,
    min_drop: float = 0.05,
    min_gap: int = 2,
    review_from: float = 0.5,
) -> FusionFinding:
    """Fusion layers: masking there lowers accuracy significantly — the family-wise
    (Bonferroni over layers) paired-bootstrap CI of the drop lies below zero and the drop is
    at least ``min_drop``. The *fusion layers* are the first contiguous block of such layers
    (plus blocks that follow it with gaps shorter than ``min_gap``). A *review layer* is a
    later significant layer, in the deepest ``1 - review_from`` of the stack, reached after
    at least ``min_gap`` consecutive layers without a significant drop (the model
    recovered, then looks at the image again); the deepest-drop layer of that block is
    reported. Either may be absent; :attr:`FusionFinding.statement` says what was found.

    For a binary metric (a ``p_value`` column) a significant layer also needs McNemar's
    exact p-value at or below the family-wise alpha. With too few items for an exact
    paired test to reach that alpha at all (``2 / 2**n > alpha``, e.g. n < 11 for 30
    layers) no layer is called significant: :attr:`FusionFinding.too_small` is set and
    the statement says "n too small". Fewer than :data:`SMALL_SAMPLE` items set
    :attr:`FusionFinding.small_sample` and the statement says so.
    """
    rows = effects[effects.variant == variant].sort_values("layer")
    if rows.empty:
        raise InterpError(f"no sweep rows for variant {variant!r}")
    n_layers = int(rows.layer.max()) + 1
    n = int(rows["n"].min()) if "n" in rows else None
    alpha = float(rows["fw_alpha"].iloc[0]) if "fw_alpha" in rows else 0.05 / max(1, rows.layer.nunique())
    significant = (rows.fw_high < 0) & (rows["diff"] <= -min_drop)
    if "p_value" in rows:
        significant &= rows["p_value"] <= alpha
    base = float(baseline) if baseline is not None else float((rows["mean"] - rows["diff"]).iloc[0])
    finding = FusionFinding(
        variant=variant, baseline=base, n=n, min_n=min_paired_n(alpha), small_sample=n is not None and n < SMALL_SAMPLE
    )
    if n is not None and min_p_value(n) > alpha:
        finding.too_small = True
        finding.statement = (
            f"n too small: with n = {n} items the exact paired test can reach at best p = {min_p_value(n):.3g}, above "
            f"the family-wise alpha {alpha:.3g} ({rows.layer.nunique()} layers); it needs at least {finding.min_n} "
            f"items, so no layer is called significant for the {variant} edit and no fusion or review layer is "
            f"detected."
        )
        return finding
    sig_layers = [int(x) for x in rows[significant].layer]
    finding.significant_layers = sig_layers
    blocks = _blocks(sig_layers)
    if not blocks:
        finding.statement = (
            f"No layer where the {variant} edit lowers accuracy significantly "
            f"(family-wise 95% CI, drop >= {min_drop:.2f}): no fusion layer and no review layer detected."
            + _small_note(finding)
        )
        return finding
    fusion = list(blocks[0])
    rest = blocks[1:]
    while rest and rest[0][0] - fusion[-1] - 1 < min_gap:
        fusion += rest.pop(0)
    finding.fusion_layers = fusion
    late = [b for b in rest if b[0] >= review_from * n_layers]
    if late:
        block = late[0]
        drops = rows.set_index("layer").loc[block, "diff"]
        finding.review_layer = int(drops.idxmin())
    text = f"Fusion layers {_span(fusion)} (masking there drops accuracy significantly)"
    if finding.review_layer is not None:
        text += f"; review layer {finding.review_layer} (a late significant drop after recovery)."
    else:
        text += "; no review layer (no late significant drop after a recovery)."
    finding.statement = text + _small_note(finding)
    return finding


def _small_note(finding: FusionFinding) -> str:
    if not finding.small_sample:
        return ""
    return f" Small sample (n = {finding.n} < {SMALL_SAMPLE}): the bootstrap CIs are rough."


def _span(layers: list[int]) -> str:
    return ", ".join(f"{b[0]}-{b[-1]}" if len(b) > 1 else str(b[0]) for b in _blocks(layers))


def per_layer_ci(
    frame: pd.DataFrame,
    value: str,
    *,
    by: tuple[str, ...] = ("layer",),
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean of ``value`` per group with a bootstrap CI over the rows (items) of the group:
    columns ``*by, mean, low, high, n, small_sample`` (``n`` < :data:`SMALL_SAMPLE`)."""
    rows = []
    for key, group in frame.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        mean, low, high = bootstrap_mean_ci(group[value].values, n_boot=n_boot, level=level, seed=seed)
        rows.append(
            {
                **dict(zip(by, key)),
                "mean": mean,
                "low": low,
                "high": high,
                "n": int(len(group)),
                "small_sample": bool(len(group) < SMALL_SAMPLE),
            }
        )
    return pd.DataFrame(rows)
