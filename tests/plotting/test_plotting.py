"""The figures draw what their tables say, state n, and leave matplotlib's state alone."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from interp import plotting


def effects_table(n: int = 8) -> pd.DataFrame:
    rows = []
    for variant, values in (("single", [0.2, 0.5, 0.9]), ("knockout_last", [0.875, 0.875, 0.875])):
        for layer, mean in enumerate(values):
            rows.append(
                {
                    "variant": variant,
                    "layer": layer,
                    "n": n,
                    "mean": mean,
                    "low": mean - 0.1,
                    "high": min(1.0, mean + 0.1),
                }
            )
    return pd.DataFrame(rows)


def texts(fig) -> str:
    return " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))


def test_no_pyplot_state_and_no_backend_switch(tmp_path):
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    open_before = plt.get_fignums()
    fig = plotting.masking_curve(effects_table(), baseline=(0.875, 0.7, 1.0), out_dir=tmp_path)
    assert plt.get_fignums() == open_before and matplotlib.get_backend() == backend
    assert isinstance(fig, matplotlib.figure.Figure)
    png = fig._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in tmp_path.iterdir()} == {"masking_curve.png", "masking_curve.pdf"}


def test_masking_curve_draws_the_table():
    table = effects_table()
    fig = plotting.masking_curve(
        table, baseline=(0.875, 0.7, 1.0), findings={"single": {"fusion_layers": [0, 1], "review_layer": None}}
    )
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    for variant, label in (("single", "mask layer l"), ("knockout_last", "knock out last→image")):
        np.testing.assert_allclose(lines[label].get_ydata(), table[table.variant == variant]["mean"])
    baseline = next(line for line in ax.get_lines() if list(line.get_ydata()) == [0.875, 0.875])
    assert lines["knock out last→image"].get_zorder() > baseline.get_zorder()  # drawn over the baseline
    assert lines["mask layer l"].get_color() != lines["knock out last→image"].get_color()
    legend = ax.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert "fusion layers (mask layer l)" in labels and "no edit (95% CI)" in labels
    assert legend.get_title().get_text() == "n = 8 questions"


def test_attention_heatmaps_share_one_scale():
    image = Image.new("RGB", (60, 40), "yellow")
    grids = {0: np.full((2, 3), 1 / 6), 5: np.array([[0.5, 0.1, 0.1], [0.1, 0.1, 0.1]])}
    fig = plotting.attention_heatmaps(image, grids, relevant=np.eye(2, 3, dtype=bool), question="Q?", answer="A")
    overlays = [im for ax in fig.axes for im in ax.get_images() if im.get_array().ndim == 2]
    assert len(overlays) == len(grids)
    assert {(im.norm.vmin, im.norm.vmax) for im in overlays} == {(0.0, 0.5)}
    assert "share of image attention" in texts(fig)  # the colourbar's label
    assert "model answer: A" in texts(fig) and "one sample" in texts(fig)


def test_contrastive_example_states_the_answers():
    image = Image.new("RGB", (60, 60), "white")
    panels = {
        "A_pre (layer 1)": np.full((3, 3), 1 / 9),
        "A_ref (layer 4)": np.eye(3) / 3,
        "masked": np.eye(3, dtype=bool),
    }
    fig = plotting.contrastive_example(
        image, panels, title="What colour?", answer_before="red", answer_after="blue", reference="red"
    )
    assert "answer without mask: red" in texts(fig) and "with contrastive mask: blue" in texts(fig)
    image_axes = [ax for ax in fig.axes if ax.get_title()]
    overlays = [im for ax in image_axes[:2] for im in ax.get_images() if im.get_array().ndim == 2]
    assert {round(float(im.norm.vmax), 6) for im in overlays} == {round(1 / 3, 6)}  # the A_ panels share a scale
    hatched = [p for p in image_axes[2].patches if p.get_hatch()]
    assert len(hatched) == 6  # the six masked (False) cells, outlined: the image under them stays visible


def test_accuracy_vs_rho_shows_every_configuration():
    rows = [
        {
            "method": "v1",
            "candidates": "all",
            "rho": rho,
            "distance": "jsd",
            "n": 10,
            "accuracy": 0.8,
            "baseline": 0.9,
            "diff": -0.1,
            "diff_low": -0.2,
            "diff_high": 0.0,
            "p_value": 0.5,
        }
        for rho in (0.1, 0.2, 0.3)
    ]
    rows.append({**rows[1], "candidates": "deep", "diff": 0.05, "diff_low": -0.05, "diff_high": 0.1})
    fig = plotting.accuracy_vs_rho(pd.DataFrame(rows), baseline=(0.9, 0.8, 1.0))
    left, right = fig.axes[:2]
    assert [t.get_text() for t in right.get_yticklabels()] == [
        "v1 all ρ=0.1 jsd",
        "v1 all ρ=0.2 jsd",
        "v1 all ρ=0.3 jsd",
        "v1 deep ρ=0.2 jsd",
    ]
    assert list(right.get_yticks()) == [3, 2, 1, 0]  # the table's first row on top
    [bars] = right.containers  # one point per configuration, at accuracy = baseline + diff
    np.testing.assert_allclose(np.asarray(bars.lines[0].get_xdata(), float), [0.8, 0.8, 0.8, 0.95])
    [swept] = left.containers  # the configuration swept over rho, on the accuracy scale
    np.testing.assert_allclose(np.asarray(swept.lines[0].get_xdata(), float), [0.1, 0.2, 0.3])
    np.testing.assert_allclose(np.asarray(swept.lines[0].get_ydata(), float), [0.8, 0.8, 0.8])
    assert "n = 10 questions" in texts(fig) and "greedy baseline (95% CI shaded)" in texts(fig)


@pytest.mark.parametrize("n_column", [True, False])
def test_n_is_stated(n_column):
    frame = pd.DataFrame({"layer": [0, 1], "mean": [0.2, 0.3], "low": [0.1, 0.2], "high": [0.3, 0.4]})
    if n_column:
        frame["n"] = 12
    fig = plotting.early_output(frame, final=0.5, **({} if n_column else {"n": 7}))
    assert ("n = 12 questions" if n_column else "n = 7 questions") in texts(fig)
    fig = plotting.pre_layer_histogram(pd.DataFrame({"layer": [0, 3], "count": [4, 5]}), n_layers=4)
    assert "n = 9 samples" in texts(fig)
