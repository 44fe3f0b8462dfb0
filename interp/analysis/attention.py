"""Attention evolution: how the last prompt token's attention over the image moves with depth.

:func:`attention_maps` records, for every sample and layer, the head-mean attention of
the last prompt token to every image token, and places each token on the primary
patch grid of the first image (``row``/``col``; -1 for tokens outside it, such as
LLaVA-NeXT's high-resolution tiles or newline tokens). With ground-truth boxes each
cell also gets ``relevant``.

From that long table, pure functions compute

* :func:`relevant_mass` — per (item, layer): the share of the grid's attention that
  falls on the relevant region, the region's area share (what uniform attention
  would give), and their ratio;
* :func:`persistent_noise` — per item: the cells *outside* the relevant region that
  sit in the layer's top-k attended cells in at least ``persist`` of the layers (the
  paper's "noise" patches), with how many layers each stays there;
* :func:`noise_mass` — per (item, layer): the share of attention on those cells.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .clean import SamplePass, sample_pass
from .items import as_items


def attention_maps(
    vlm,
    samples: Any,
    *,
    layers: Any = "all",
    limit: int | None = None,
    remote: bool | str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Long table ``item, kind, layer, token, row, col, attention, relevant``."""
    items = as_items(samples, limit)
    frames = []
    for item in tqdm(items, desc="attention maps", unit="sample", disable=not progress):
        sp = sample_pass(vlm, item, restartable=False, remote=remote, attention_layers=layers, residual_layers=None)
        frames.append(attention_rows(sp))
    return attention_table(frames, vlm)


def attention_table(frames: list[pd.DataFrame], vlm) -> pd.DataFrame:
    out = pd.concat(frames, ignore_index=True)
    out.attrs.update({"model": vlm.name, "query": "last prompt token", "heads": "mean"})
    return out


def attention_rows(sp: SamplePass) -> pd.DataFrame:
    """One sample's rows of :func:`attention_maps`, from its clean pass."""
    item, prepared = sp.item, sp.prepared
    grid = prepared.layouts[0].grid
    token_cells = grid.cells_of(prepared.image_positions).numpy()
    relevant = None
    if item.has_boxes:
        mask = item.relevant_mask(*grid.shape).numpy()
        relevant = np.array([bool(mask[r, c]) if r >= 0 else False for r, c in token_cells])
    frames = []
    for layer, values in sorted(sp.attention().items()):
        values = values.numpy()
        frames.append(
            pd.DataFrame(
                {
                    "item": item.id,
                    "kind": item.kind,
                    "layer": layer,
                    "token": np.arange(values.size),
                    "row": token_cells[:, 0],
                    "col": token_cells[:, 1],
                    "attention": values,
                    "relevant": relevant if relevant is not None else np.nan,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def grid_frame(maps: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``maps`` on the primary grid, with ``share`` = attention renormalised
    over the grid cells of each (item, layer)."""
    grid = maps[maps.row >= 0].copy()
    total = grid.groupby(["item", "layer"]).attention.transform("sum")
    grid["share"] = grid.attention / total.where(total > 0, np.nan)
    return grid


def share_grid(maps: pd.DataFrame, item: str, layer: int) -> np.ndarray:
    """``[rows, cols]``: one item's attention share per grid cell at one layer (NaN where no
    token sits), for heatmaps."""
    grid = grid_frame(maps[(maps.item == item) & (maps.layer == layer)])
    return cell_grid(grid.row.values, grid.col.values, grid.share.values)


def token_grid(maps: pd.DataFrame, item: str, values) -> np.ndarray:
    """``[rows, cols]``: per-image-token ``values`` of one item (in token order) on its grid."""
    cells = maps[maps.item == item].drop_duplicates("token").sort_values("token")
    return cell_grid(cells.row.values, cells.col.values, values)


def cell_grid(rows, cols, values) -> np.ndarray:
    """Values at their ``(row, col)`` cells (``-1`` = no cell) -> a NaN-filled grid."""
    rows, cols = np.asarray(rows), np.asarray(cols)
    values = np.asarray(values, dtype=float)
    ok = rows >= 0
    out = np.full((int(rows[ok].max()) + 1, int(cols[ok].max()) + 1), np.nan)
    out[rows[ok], cols[ok]] = values[ok]
    return out


def relevant_mass(maps: pd.DataFrame) -> pd.DataFrame:
    """Per (item, layer): ``image_mass`` (attention on all image tokens), ``relevant_share``
    (share of the grid's attention on relevant cells), ``relevant_area`` and ``ratio``
    (relevant_share / relevant_area; 1 = no preference). Items without boxes are skipped."""
    boxed = maps[maps.relevant.notna()]
    image_mass = maps.groupby(["item", "layer"]).attention.sum().rename("image_mass")
    grid = grid_frame(boxed)
    grid["relevant"] = grid.relevant.astype(bool)
    grouped = grid.groupby(["item", "kind", "layer"])
    out = pd.DataFrame(
        {
            "relevant_share": grouped.apply(lambda g: g.share[g.relevant].sum(), include_groups=False),
            "relevant_area": grouped.relevant.mean(),
        }
    ).reset_index()
    out = out[out.relevant_area > 0]
    out["ratio"] = out.relevant_share / out.relevant_area
    return out.merge(image_mass.reset_index(), on=["item", "layer"], how="left")


def top_cells(maps: pd.DataFrame, k: int) -> pd.DataFrame:
    """The ``k`` most attended grid cells of every (item, layer)."""
    grid = grid_frame(maps)
    return grid.sort_values("share", ascending=False).groupby(["item", "layer"]).head(k)


def persistent_noise(maps: pd.DataFrame, *, k: int | None = None, persist: float = 0.5) -> pd.DataFrame:
    """Per item and noise cell: cells outside the relevant region that are in the top-``k``
    (default: 10% of the grid, at least 1) in at least ``persist`` of the layers.

    Columns: ``item, kind, row, col, layers_in_top_k, fraction`` (of the layers), one row
    per persistent noise cell; items with none have no rows (see :func:`noise_summary`)."""
    boxed = maps[maps.relevant.notna() & (maps.row >= 0)]
    if boxed.empty:
        return pd.DataFrame(columns=["item", "kind", "row", "col", "layers_in_top_k", "fraction"])
    n_cells = int(boxed.groupby(["item", "layer"]).size().max())
    k = k or max(1, round(0.1 * n_cells))
    top = top_cells(boxed, k)
    top = top[~top.relevant.astype(bool)]
    n_layers = boxed.groupby("item").layer.nunique()
    counts = top.groupby(["item", "kind", "row", "col"]).size().rename("layers_in_top_k").reset_index()
    counts["fraction"] = counts.layers_in_top_k / counts.item.map(n_layers)
    out = counts[counts.fraction >= persist].reset_index(drop=True)
    out.attrs.update({"k": k, "persist": persist})
    return out


def noise_mass(maps: pd.DataFrame, noise: pd.DataFrame) -> pd.DataFrame:
    """Per (item, layer): share of the grid's attention on the item's persistent noise cells."""
    grid = grid_frame(maps[maps.relevant.notna()])
    keys = set(zip(noise.item, noise.row, noise.col))
    grid["noise"] = [(i, r, c) in keys for i, r, c in zip(grid.item, grid.row, grid.col)]
    return (
        grid[grid.noise]
        .groupby(["item", "layer"])
        .share.sum()
        .reindex(pd.MultiIndex.from_frame(grid[["item", "layer"]].drop_duplicates()), fill_value=0.0)
        .rename("noise_share")
        .reset_index()
    )


def noise_summary(maps: pd.DataFrame, noise: pd.DataFrame) -> dict:
    """Headline numbers: share of items with at least one persistent noise cell, mean count."""
    items = maps[maps.relevant.notna()].item.unique()
    per_item = noise.groupby("item").size().reindex(items, fill_value=0)
    return {
        "items": int(len(items)),
        "items_with_noise": int((per_item > 0).sum()),
        "share_items_with_noise": float((per_item > 0).mean()) if len(items) else float("nan"),
        "mean_noise_cells": float(per_item.mean()) if len(items) else float("nan"),
        "k": noise.attrs.get("k"),
        "persist": noise.attrs.get("persist"),
    }


def layer_distances(maps: pd.DataFrame, reference_layer: int) -> pd.DataFrame:
    """Per (item, layer): JSD and Hellinger distance between the layer's distribution over
    the image tokens and the reference layer's."""
    from ..interventions.distance import hellinger, jsd

    rows = []
    for item, group in maps.groupby("item", sort=False):
        table = group.pivot(index="layer", columns="token", values="attention")
        if reference_layer not in table.index:
            continue
        ref = torch.tensor(table.loc[reference_layer].values)
        values = torch.tensor(table.values)
        j = jsd(values, ref.expand_as(values)).numpy()
        h = hellinger(values, ref.expand_as(values)).numpy()
        for layer, jv, hv in zip(table.index, j, h):
            rows.append({"item": item, "layer": int(layer), "jsd": float(jv), "hellinger": float(hv)})
    out = pd.DataFrame(rows)
    out.attrs["reference_layer"] = reference_layer
    return out
