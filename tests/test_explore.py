"""``interp explore``: the attention it shows equals HF eager attention, the page is
self-contained, and in a real headless Chromium it loads cleanly and its layer slider
moves the overlay."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from interp.explore import build_page, explore, read_run, sample_attention

from .conftest import make_image, tiny_vlm


def write_run(directory, with_patching: bool = True):
    """A run directory as `interp reproduce` writes it (only the fields the page reads)."""
    rows = [
        {"variant": v, "layer": layer, "n": 8, "mean": m, "low": m - 0.1, "high": min(1.0, m + 0.1)}
        for v, base in (("single", 0.3), ("knockout_last", 0.8))
        for layer, m in enumerate([base, base + 0.2, 0.9])
    ]
    report = {
        "model": "tiny:llava",
        "dataset": "synthetic:test",
        "n_samples": 8,
        "baseline_accuracy": {"mean": 0.875, "low": 0.625, "high": 1.0},
        "masking": {"per_layer": rows, "findings": {"single": {"fusion_layers": [0, 1]}}},
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report))
    if with_patching:
        pd.DataFrame(
            [{"layer": layer, "position": p, "effect": 0.1 * layer - 0.05 * p} for layer in range(3) for p in range(4)]
        ).to_csv(directory / "patching.csv", index=False)
    return rows


@pytest.fixture(scope="module")
def vlm():
    return tiny_vlm("llava", "eager")


@pytest.fixture(scope="module")
def samples():
    return [(make_image(48, 64, seed=s), "What colour is the square?", "red") for s in range(2)]


def test_attention_equals_hf_eager(vlm, samples):
    """Every head's last-token attention on the grid equals HF eager output_attentions."""
    [shown] = sample_attention(vlm, samples[:1], progress=False)
    prepared = vlm.prepare(*samples[0][:2])
    with torch.no_grad():
        out = vlm.model(**prepared.inputs, output_attentions=True)
    positions = prepared.layouts[0].grid.positions
    assert shown.grids.shape[:2] == (vlm.n_layers, out.attentions[0].shape[1])
    for layer, attention in enumerate(out.attentions):
        expected = np.full(shown.grids.shape[1:], np.nan)
        for (r, c), p in np.ndenumerate(positions.numpy()):
            if p >= 0:
                expected[:, r, c] = attention[0, :, -1, p].float().numpy()
        np.testing.assert_allclose(shown.grids[layer], expected, atol=1e-5, equal_nan=True)
    # the overlay draws the head mean of the layer its slider opens at (as its square root)
    from interp.explore import attention_figure

    figure = attention_figure(shown)
    layer = figure.layout.sliders[0].active
    mean = np.nanmean(shown.grids[layer], axis=0)
    np.testing.assert_allclose(np.array(figure.data[1].customdata, dtype=float), mean, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(np.array(figure.data[1].z, dtype=float) ** 2, mean, atol=1e-5, equal_nan=True)


def test_read_run(tmp_path):
    rows = write_run(tmp_path / "run")
    run = read_run(tmp_path / "run")
    assert run.masking[["variant", "layer", "mean"]].to_dict("records") == [
        {k: r[k] for k in ("variant", "layer", "mean")} for r in rows
    ]
    assert run.baseline["mean"] == 0.875 and run.patching.shape == (12, 3)
    with pytest.raises(Exception, match="no report.json"):
        read_run(tmp_path / "nowhere")


def test_page_is_self_contained(vlm, samples, tmp_path):
    write_run(tmp_path / "run")
    page = explore(vlm, samples, tmp_path / "out", run_dir=tmp_path / "run", progress=False)
    text = (tmp_path / "out" / "index.html").read_text()
    assert text == page.html
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']?(https?:)?//""", text), "an external asset"
    assert "Plotly" in text and 'id="masking"' in text and 'id="patching"' in text
    assert "<iframe srcdoc=" in page._repr_html_()
    bare = build_page(sample_attention(vlm, samples[:1], progress=False))
    assert 'id="patching-missing"' in bare and 'id="masking"' not in bare


def test_cli_explore(tmp_path):
    from interp.cli import main

    write_run(tmp_path / "run", with_patching=False)
    assert (
        main(
            [
                "explore",
                "--model",
                "tiny:llava",
                "--run",
                str(tmp_path / "run"),
                "--out",
                str(tmp_path / "page"),
                "--limit",
                "1",
            ]
        )
        == 0
    )
    assert 'id="masking"' in (tmp_path / "page" / "index.html").read_text()
    assert (
        main(["explore", "--model", "tiny:llava", "--run", str(tmp_path / "missing"), "--out", str(tmp_path / "page2")])
        == 2
    )


def _chromium() -> str | None:
    return next(
        (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None
    )


def test_page_in_headless_chromium(vlm, samples, tmp_path):
    """The page loads with no console error; clicking the slider's far end changes the
    overlay (its data and its pixels); the screenshot is not blank."""
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium installed (apt-get install chromium; .ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    from PIL import Image

    write_run(tmp_path / "run")
    page_file = explore(vlm, samples[:1], tmp_path / "out", run_dir=tmp_path / "run", progress=False).path
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            problems = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(page_file.as_uri())
            page.wait_for_function("document.querySelectorAll('#attention-0 .slider-rail-rect').length === 1")
            figure = page.locator("#attention-0")
            overlay = "JSON.stringify(document.getElementById('attention-0').data[1].z)"
            active = "document.getElementById('attention-0').layout.sliders[0].active"
            before_z, before_png, start = page.evaluate(overlay), figure.screenshot(), page.evaluate(active)
            rail = page.locator("#attention-0 .slider-rail-rect").bounding_box()
            target = 0 if start != 0 else vlm.n_layers - 1  # the slider's far end from where it opened
            x = rail["x"] + 2 if target == 0 else rail["x"] + rail["width"] - 2
            page.mouse.click(x, rail["y"] + rail["height"] / 2)
            page.wait_for_function(f"{overlay} !== {json.dumps(before_z)}")
            after_png = figure.screenshot()
            assert page.evaluate(active) == target
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not problems, problems
    assert before_png != after_png, "moving the slider did not change the drawn overlay"
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10 and len(np.unique(pixels)) > 50, "the screenshot is blank"
