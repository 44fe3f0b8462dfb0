"""Patching and lens figures draw the tables they are given; the report sections and
``interp patch`` write what they say, and the CLI rejects bad input in one line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from interp.cli import main
from interp.plotting import patching as figures

from ..conftest import make_image


def _effects():
    rows = []
    for change, metric in (("colour", "effect"), ("distractor", "answer_logit_change")):
        for layer in range(3):
            for k, group in enumerate(("changed", "other_image", "last")):
                value = float(layer * 10 + k) if metric == "effect" else 0.01 * (layer - k)
                rows.append(
                    {
                        "change": change,
                        "site": "resid_pre",
                        "layer": layer,
                        "group": group,
                        "mean": value,
                        "low": value - 1,
                        "high": value + 1,
                        "n": 4,
                        "metric": metric,
                    }
                )
    return pd.DataFrame(rows)


def test_heatmap_shows_the_mean_effect_per_group_and_layer():
    fig = figures.patching_heatmap(_effects())
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (3, 3)
    assert image[0, 2] == 20.0 and image[2, 1] == 12.0  # rows: changed, other_image, last; columns: layers
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["changed cells", "other image cells", "last token"]
    assert "distractor" in fig.axes[2].get_title() or "distractor" in fig.axes[1].get_title()


def test_cell_maps_and_lens_words_put_values_on_the_grid(tmp_path):
    grids = {0: np.arange(6.0).reshape(2, 3), 5: np.ones((2, 3))}
    changed = np.array([[True, False, False], [False, False, True]])
    fig = figures.patching_cell_maps(make_image(48, 64), grids, changed=changed, out_dir=tmp_path)
    assert np.array_equal(fig.axes[0].images[1].get_array(), grids[0])
    assert len(fig.axes[0].patches) == 2  # the changed cells outlined
    assert (tmp_path / "patching_cells.png").exists() and (tmp_path / "patching_cells.pdf").exists()
    words = np.array([["red", "he"], ["", "circle"]], dtype=object)
    truth = np.array([["red", ""], ["", "blue"]], dtype=object)
    fig = figures.lens_words(make_image(48, 64), {3: words}, truth=truth)
    texts = {t.get_text(): t.get_color() for t in fig.axes[0].texts}
    assert set(texts) == {"red", "he", "␣", "circle"} and texts["red"] == "darkgreen" and texts["circle"] == "black"


def test_interp_patch_writes_the_report_and_rejects_bad_input(tmp_path, capsys):
    out = tmp_path / "patch"
    code = main(
        [
            "patch",
            "--model",
            "tiny:llava",
            "--out",
            str(out),
            "--pairs",
            "3",
            "--lens",
            "1",
            "--cell-pairs",
            "1",
            "--n-boot",
            "50",
        ]
    )
    assert code == 0
    report = json.loads((out / "patching.json").read_text())
    assert report["patching"]["n_pairs"] == 3 and report["image_lens"]["n_samples"] == 1
    sweep = pd.read_csv(out / "patching_sweep.csv")
    assert set(sweep.change) == {"colour", "shape", "distractor"}
    assert sweep[sweep.group == "cell"].pair.nunique() == 1
    for name in ("patching_heatmap", "patching_cells", "image_lens_accuracy", "image_lens_words"):
        assert (out / f"{name}.png").exists()
    assert "## Counterfactual activation patching" in (out / "patching.md").read_text()
    assert main(["patch", "--model", "tiny:llava", "--out", str(out), "--changes", "hue"]) == 2
    assert "error: --changes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["patch", "--model", "tiny:llava"])  # --out is required


def test_interp_patch_per_head_writes_the_heads_and_their_figure(tmp_path):
    out = tmp_path / "heads"
    code = main(
        [
            "patch",
            "--model",
            "tiny:llava",
            "--out",
            str(out),
            "--pairs",
            "3",
            "--sites",
            "resid_pre,z",
            "--heads",
            "0,1",
            "--groups",
            "changed,last",
            "--layers",
            "1,2",
            "--lens",
            "0",
            "--cell-pairs",
            "0",
            "--n-boot",
            "50",
        ]
    )
    assert code == 0
    report = json.loads((out / "patching.json").read_text())["patching"]
    assert report["sites"] == ["resid_pre", "z"] and report["summary_site"] == "resid_pre"
    sweep = pd.read_csv(out / "patching_sweep.csv")
    heads = sweep[sweep.site == "z"]
    assert set(heads["head"]) == {0, 1} and set(heads.layer) == {1, 2} and set(sweep[sweep.site != "z"]["head"]) == {-1}
    best = report["top_heads"]
    assert best and {h["layer"] for h in best} <= {1, 2} and all(h["low"] <= h["mean"] <= h["high"] for h in best)
    # the top head of each change is the largest mean effect of its per-head last-token rows
    answer = heads[(heads.group == "last") & ~heads.same_first_token]
    for change, part in answer.groupby("change"):
        top = next(h for h in best if h["change"] == change)
        means = part.groupby(["layer", "head"]).effect.mean()
        assert abs(top["mean"] - means.max()) < 1e-9 and (top["layer"], top["head"]) == means.idxmax()
    assert (out / "patching_heads_colour.png").exists() and (out / "patching_heatmap.png").exists()
    assert "### Single attention heads" in (out / "patching.md").read_text()
    import matplotlib.pyplot as plt

    assert not plt.get_fignums()  # the figures are pyplot-free: nothing left open in pyplot's registry
