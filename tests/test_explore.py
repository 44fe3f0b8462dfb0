"""``interp explore``: the attention it shows equals HF eager attention, the page is
self-contained, it maps every patching output `interp reproduce` and `interp patch` write
(one band per position group, per change, the per-cell rows apart), refuses other tables
in one line, opens every sample at one layer with one slider for the image and the heads,
keeps captions clear of plotly's modebar, and in a real headless Chromium it loads cleanly
and its layer slider moves the overlay and every head."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from interp.errors import InputError
from interp.explore import (
    SampleAttention,
    attention_figure,
    build_page,
    explore,
    layer_concentration,
    patching_bands,
    patching_cells,
    patching_figure,
    patching_table,
    read_patching,
    read_run,
    sample_attention,
    start_layer,
)

from .conftest import make_image, tiny_vlm

#: patching_sweep.csv's columns, in the order `interp reproduce` / `interp patch` write them
SWEEP_COLUMNS = [
    "pair",
    "change",
    "clean_logit_diff",
    "corrupt_logit_diff",
    "clean_correct",
    "corrupt_correct",
    "same_first_token",
    "site",
    "head",
    "layer",
    "group",
    "row",
    "col",
    "logit_diff",
    "effect",
    "answer_logit_change",
]
GROUPS = ["changed", "other_image", "question", "other_text", "last"]
#: (pair, change, answers differ): two answer-changing pairs and a control
PAIRS = [
    ("test-000000-colour", "colour", True),
    ("test-000001-colour", "colour", True),
    ("test-000002-d", "distractor", False),
]
CELL_LAYERS, GRID = (0, 2), (2, 3)


def _effect(pair: int, layer: int, group: int) -> float:
    return round(0.1 * layer + 0.01 * group + 0.2 * pair, 6)


def sweep_rows() -> pd.DataFrame:
    """A small patching sweep as `interp reproduce` writes it: 3 layers x 5 position
    groups per pair, and per-cell rows (group "cell", values of 50 and more so that
    averaging them into a band would show) for the first pair and the control at two layers."""
    rows = []
    for index, (pair, change, differ) in enumerate(PAIRS):
        common = dict(pair=pair, change=change, clean_logit_diff=2.0, corrupt_logit_diff=-1.0)
        common |= dict(clean_correct=True, corrupt_correct=True, same_first_token=not differ, site="resid_pre", head=-1)
        for layer in range(3):
            for g, group in enumerate(GROUPS):
                effect = _effect(index, layer, g)
                rows.append(
                    common
                    | dict(layer=layer, group=group, row=-1, col=-1, logit_diff=0.5)
                    | dict(effect=effect if differ else np.nan, answer_logit_change=-effect)
                )
        for layer in CELL_LAYERS if index != 1 else ():
            for r in range(GRID[0]):
                for c in range(GRID[1]):
                    rows.append(
                        common
                        | dict(layer=layer, group="cell", row=r, col=c, logit_diff=9.0)
                        | dict(effect=100.0 + 10 * r + c + layer if differ else np.nan, answer_logit_change=50.0)
                    )
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


def patching_summary(sweep: pd.DataFrame) -> dict:
    """report.json's ``patching`` section (the fields the page reads): per (change, site,
    head, layer, group) the mean of effect, or of answer_logit_change for controls."""
    records = []
    groups = sweep[sweep.group != "cell"]
    for (change, layer, group), part in groups.groupby(["change", "layer", "group"], sort=False):
        metric = "effect" if part.effect.notna().any() else "answer_logit_change"
        mean = float(part[metric].mean())
        records.append(
            dict(change=change, site="resid_pre", head=-1, layer=int(layer), group=group, mean=mean)
            | dict(low=mean - 0.1, high=mean + 0.1, n=len(part), small_sample=True, metric=metric)
        )
    return {"n_pairs": len(PAIRS), "sites": ["resid_pre"], "effects": records, "head_effects": []}


def write_run(directory, with_patching: bool = True):
    """A run directory as `interp reproduce` writes it (the fields the page reads): report.json
    with the masking table and the patching summary, and patching_sweep.csv."""
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
    if with_patching:
        sweep = sweep_rows()
        report["patching"] = patching_summary(sweep)
        sweep.to_csv(directory / "patching_sweep.csv", index=False)
    (directory / "report.json").write_text(json.dumps(report))
    return rows


def write_masking_sweep(path):
    """A masking sweep CSV (`interp reproduce`'s masking_sweep.csv): not a patching table."""
    pd.DataFrame(
        [{"item": "test-000000", "kind": "attribute", "variant": "single", "layer": 0, "correct": 1.0, "logprob": -1.0}]
    ).to_csv(path, index=False)
    return path


def fake_sample(name: str, peaks: list[float], n_heads: int = 3, seed: int = 0) -> SampleAttention:
    """A sample with made-up attention (no model): at each layer every head puts ``peak``
    (at least 0.2) on one cell and about the same on the others; one cell has no token (NaN)."""
    rng = np.random.default_rng(seed)
    rows, cols = 3, 4
    grids = np.empty((len(peaks), n_heads, rows, cols))
    for layer, peak in enumerate(peaks):
        rest = (1 - peak) / (rows * cols - 2) * (1 + 0.1 * rng.uniform(-1, 1, size=(n_heads, rows * cols - 2)))
        flat = np.concatenate([np.full((n_heads, 1), peak), rest, np.full((n_heads, 1), np.nan)], axis=1)
        grids[layer] = flat.reshape(n_heads, rows, cols)
    relevant = np.zeros((rows, cols), dtype=bool)
    relevant[0, 0] = True
    return SampleAttention(
        id=name,
        question="What colour is the square?",
        answers=("red",),
        answer="red",
        image=make_image(48, 64, seed=seed),
        grids=grids,
        relevant=relevant,
    )


def page_figures(page: str) -> dict[str, tuple[list, dict]]:
    """Every figure on a page: ``{div id: (data, layout)}``, read from its ``Plotly.newPlot`` call."""
    decoder, out = json.JSONDecoder(), {}
    for match in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', page):
        data, end = decoder.raw_decode(page, match.end())
        layout, _ = decoder.raw_decode(page, page.index("{", end))
        out[match.group(1)] = (data, layout)
    return out


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
    assert run.baseline["mean"] == 0.875 and run.title == "tiny:llava on synthetic:test (n=8)"
    # the sweep reproduce writes is found (not a patching.csv that nothing writes), every row of it
    assert run.patching.source.endswith("patching_sweep.csv") and run.patching.rows.shape == sweep_rows().shape
    write_run(tmp_path / "bare", with_patching=False)
    assert read_run(tmp_path / "bare").patching is None
    with pytest.raises(InputError, match="no report.json"):
        read_run(tmp_path / "nowhere")


def test_reproduce_run_maps_one_band_per_group(tmp_path):
    """A reproduce run's patching_sweep.csv: one band per position group, per change, the
    mean over pairs of the group rows only; the per-cell rows kept apart, not averaged in."""
    write_run(tmp_path / "run")
    patching = read_run(tmp_path / "run").patching
    bands = patching_bands(patching)
    colour = bands[bands.change == "colour"]
    assert list(dict.fromkeys(colour.band)) == GROUPS and set(colour.metric) == {"effect"}
    for g, group in enumerate(GROUPS):
        for layer in range(3):
            [value] = colour[(colour.group == group) & (colour.layer == layer)]["mean"]
            assert value == pytest.approx((_effect(0, layer, g) + _effect(1, layer, g)) / 2)
    assert set(colour.n) == {2} and bands["mean"].abs().max() < 10, "per-cell rows were averaged into a band"
    # the control (answers agree: effect undefined) shows the answer logit's change
    distractor = bands[bands.change == "distractor"]
    assert list(dict.fromkeys(distractor.band)) == GROUPS and set(distractor.metric) == {"answer_logit_change"}
    assert distractor["mean"].tolist() == pytest.approx([-_effect(2, layer, g) for g in range(5) for layer in range(3)])

    cells = patching_cells(patching)
    assert len(cells) == 2 * len(CELL_LAYERS) * GRID[0] * GRID[1] and sorted(cells.layer.unique()) == list(CELL_LAYERS)
    first, control = (cells[cells.pair == PAIRS[i][0]] for i in (0, 2))
    assert set(first.metric) == {"effect"} and (first.value >= 100).all()
    assert set(control.metric) == {"answer_logit_change"} and (control.value == 50).all()

    figure = patching_figure(bands)
    assert [trace.name for trace in figure.data] == ["colour", "distractor"]
    assert list(figure.data[0].y) == GROUPS and list(figure.data[0].x) == ["0", "1", "2"]
    np.testing.assert_allclose(
        np.array(figure.data[0].z, dtype=float),
        colour.pivot(index="band", columns="layer", values="mean").loc[GROUPS].to_numpy(),
    )
    [menu] = figure.layout.updatemenus  # the change type is selectable
    assert [b.label for b in menu.buttons] == ["colour", "distractor"]
    assert [b.args[0]["visible"] for b in menu.buttons] == [[True, False], [False, True]]
    assert [trace.visible for trace in figure.data] == [True, False]

    page = build_page([fake_sample("a", [0.2, 0.6, 0.3])], read_run(tmp_path / "run"))
    figures = page_figures(page)
    assert {"patching", "patching-cells", "masking", "attention-0"} <= set(figures)
    assert 'id="patching-missing"' not in page and "patching_sweep.csv" in page
    cell_data, cell_layout = figures["patching-cells"]  # one map per cell layer and pair, a menu picks the pair
    assert len(cell_data) == 2 * len(CELL_LAYERS) and np.nanmin(np.array(cell_data[0]["z"], dtype=float)) >= 100
    assert [b["label"] for b in cell_layout["updatemenus"][0]["buttons"]] == [
        f"{PAIRS[0][0]} (colour)",
        f"{PAIRS[2][0]} (distractor)",
    ]


def test_every_patching_output_reads(tmp_path):
    """The sweep's CSV, report.json's summary, `interp patch`'s patching.json, the row log
    of a sweep still running, a directory of any of them, and a DataFrame all map the same."""
    write_run(tmp_path / "run")
    expected = patching_bands(read_patching(tmp_path / "run" / "patching_sweep.csv"))
    key = ["change", "band", "layer"]

    def same(patching):
        bands = patching_bands(patching)
        np.testing.assert_allclose(bands.sort_values(key)["mean"], expected.sort_values(key)["mean"], atol=1e-9)
        assert list(bands.metric) == list(expected.metric)
        return bands

    same(read_patching(tmp_path / "run"))
    summary = read_patching(tmp_path / "run" / "report.json")
    assert summary.rows is None and "low" in same(summary) and patching_cells(summary).empty
    # `interp patch --out`: patching.json ({"model", "dataset", "patching": ...}) and patching_sweep.csv
    patch = tmp_path / "patch"
    patch.mkdir()
    section = json.loads((tmp_path / "run" / "report.json").read_text())["patching"]
    (patch / "patching.json").write_text(
        json.dumps({"model": "tiny:llava", "dataset": "synthetic:test", "patching": section})
    )
    same(read_patching(patch / "patching.json"))
    (tmp_path / "run" / "patching_sweep.csv").rename(patch / "patching_sweep.csv")
    run = read_run(patch)
    assert run.masking is None and run.patching.source.endswith("patching_sweep.csv") and same(run.patching) is not None
    assert read_run(tmp_path / "run").patching.source.endswith("(patching summary)")
    # a sweep still running: its row log (one JSON line per pair; a last line cut by a kill is left out)
    log = tmp_path / "partial" / "rows" / "patching.jsonl"
    log.parent.mkdir(parents=True)
    sweep = sweep_rows()
    lines = [
        json.dumps({"key": p, "rows": json.loads(part.to_json(orient="records"))}) for p, part in sweep.groupby("pair")
    ]
    log.write_text("\n".join(lines) + '\n{"key": "cut', encoding="utf-8")
    partial = read_patching(tmp_path / "partial")
    assert partial.partial and len(partial.rows) == len(sweep) and same(partial) is not None
    same(read_patching(log))
    same(patching_table(sweep))


def test_head_rows_get_a_band_per_head():
    """Site ``z`` (one head patched at a time): a band per (group, head), never averaged
    over heads, after the whole-activation site; the menu names the site."""
    sweep = sweep_rows()
    heads = sweep[sweep.group.isin(["last"]) & (sweep.change == "colour")].copy()
    heads = pd.concat([heads.assign(site="z", head=h, effect=heads.effect + h) for h in (0, 1)])
    bands = patching_bands(patching_table(pd.concat([sweep, heads])))
    z = bands[bands.site == "z"]
    assert (
        list(dict.fromkeys(z.band)) == ["last · head 0", "last · head 1"]
        and (bands.site == "z").is_monotonic_increasing
    )
    assert z[z["head"] == 1]["mean"].to_numpy() == pytest.approx(z[z["head"] == 0]["mean"].to_numpy() + 1)
    [menu] = patching_figure(bands).layout.updatemenus
    assert [b.label for b in menu.buttons] == ["colour · resid_pre", "distractor · resid_pre", "colour · z"]


def test_other_tables_are_refused_in_one_line(vlm, tmp_path, capsys):
    """A masking sweep CSV, any CSV without the columns, a JSON without patching: one
    InputError line that names the expected columns; the CLI prints it and exits 2."""
    masking = write_masking_sweep(tmp_path / "masking_sweep.csv")
    with pytest.raises(InputError) as refused:
        read_patching(masking)
    message = str(refused.value)
    assert "\n" not in message and "masking sweep" in message
    assert "pair, change, site, layer, group, row, col, effect" in message
    other = tmp_path / "other.csv"
    pd.DataFrame({"layer": [0, 1], "position": [0, 1], "value": [0.1, 0.2]}).to_csv(other, index=False)
    with pytest.raises(InputError, match=r"not a patching table: expected the columns of patching_sweep\.csv"):
        read_patching(other)
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(InputError, match="no patching section"):
        read_patching(tmp_path / "empty.json")
    with pytest.raises(InputError, match="no patching output"):
        read_patching(tmp_path)
    with pytest.raises(InputError, match="not a patching table"):
        explore(vlm, [], patching=masking, progress=False)
    from interp.cli import main

    args = ["explore", "--model", "tiny:llava", "--patching", str(masking), "--out", str(tmp_path / "page")]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "patching_sweep.csv" in err
    assert not (tmp_path / "page" / "index.html").exists()


def test_every_sample_opens_at_one_layer():
    """Each sample alone would open elsewhere (its own most concentrated layer); on the
    page all open at the layer most concentrated on average, and the note says so."""
    a = fake_sample("a", [0.2, 0.9, 0.2, 0.2], seed=1)
    b = fake_sample("b", [0.2, 0.4, 0.2, 0.5], seed=2)
    concentration = layer_concentration([a, b])
    assert concentration.peak.tolist() == pytest.approx([0.2, 0.9, 0.2, 0.2, 0.2, 0.4, 0.2, 0.5])
    assert (start_layer([a]), start_layer([b]), start_layer([a, b])) == (1, 3, 1)
    figures = page_figures(page := build_page([a, b]))
    assert [figures[f"attention-{i}"][1]["sliders"][0]["active"] for i in range(2)] == [1, 1]
    assert "Every sample opens at layer 1" in page and "on average over the 2 sample(s) shown" in page
    # what each opens with is that layer's maps
    for index, sample in enumerate([a, b]):
        data, _ = figures[f"attention-{index}"]
        np.testing.assert_allclose(
            np.array(data[1]["customdata"], dtype=float), sample.head_mean[1], atol=1e-6, equal_nan=True
        )
        np.testing.assert_allclose(
            np.array(data[2]["customdata"], dtype=float), sample.grids[1, 0], atol=1e-6, equal_nan=True
        )


def test_one_slider_moves_image_and_every_head():
    """The image overlay and the head maps are one figure with one layer slider: each step
    sets the overlay (trace 1) and every head (traces 2..) to that layer."""
    sample = fake_sample("a", [0.2, 0.7, 0.3, 0.5], n_heads=5)
    figure = attention_figure(sample, start=2)
    n_heads = sample.grids.shape[1]
    assert [trace.type for trace in figure.data] == ["image"] + ["heatmap"] * (n_heads + 1)
    [slider] = figure.layout.sliders
    assert slider.active == 2 and len(slider.steps) == sample.grids.shape[0]
    for layer, step in enumerate(slider.steps):
        values, traces = step.args
        assert step.method == "restyle" and list(traces) == list(range(1, n_heads + 2))
        maps = [sample.head_mean[layer]] + [sample.grids[layer, h] for h in range(n_heads)]
        for drawn, shown, expected in zip(values["z"], values["customdata"], maps):
            np.testing.assert_allclose(np.array(shown, dtype=float), expected, atol=1e-6, equal_nan=True)
            np.testing.assert_allclose(np.array(drawn, dtype=float) ** 2, expected, atol=1e-5, equal_nan=True)
    for trace, values in zip(figure.data[1:], slider.steps[2].args[0]["z"]):  # it opens at its step
        np.testing.assert_array_equal(np.array(trace.z, dtype=float), np.array(values, dtype=float))
    # the page carries the same slider: one per sample figure, none elsewhere
    figures = page_figures(build_page([sample]))
    assert [len(layout.get("sliders", [])) for _, layout in figures.values()] == [1]


def test_captions_are_outside_the_plots(tmp_path):
    """The captions are HTML above each figure, not plotly titles under the modebar (top
    right); menus sit top left; every figure keeps a top margin for the modebar."""
    write_run(tmp_path / "run")
    page = build_page([fake_sample("a", [0.2, 0.6, 0.3])], read_run(tmp_path / "run"))
    figures = page_figures(page)
    assert set(figures) == {"attention-0", "masking", "patching", "patching-cells"}
    for div_id, (_, layout) in figures.items():
        assert not (layout.get("title") or {}).get("text"), f"{div_id} has an in-plot title"
        assert layout["margin"]["t"] >= 40, div_id
        for menu in layout.get("updatemenus", []):
            assert menu["x"] == 0 and menu["xanchor"] == "left", div_id
        assert page.index(f'id="{div_id}-caption"') < page.index(f'<div id="{div_id}"'), div_id
    assert "What colour is the square?  →  red  (expected: red)" in page


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
    # --patching: a file passed on its own maps without a run directory
    alone = explore(vlm, samples[:1], patching=tmp_path / "run" / "patching_sweep.csv", progress=False)
    assert 'id="patching"' in alone.html and 'id="masking"' not in alone.html


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


def _overlaps(a: dict | None, b: dict | None) -> bool:
    if not a or not b or not a["width"] or not b["width"]:
        return False
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def test_page_in_headless_chromium(vlm, samples, tmp_path):
    """The page loads with no console error; clicking the slider's far end changes the
    overlay and every head's map (their data and the pixels); plotly's modebar covers no
    caption, title or menu; the patching menu switches the change; the screenshot is not
    blank."""
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
            overlaps = []
            for div_id in ("attention-0", "masking", "patching", "patching-cells"):
                page.locator(f"#{div_id}").scroll_into_view_if_needed()
                page.locator(f"#{div_id} .svg-container").hover()  # the modebar shows on hover
                modebar = page.locator(f"#{div_id} .modebar").bounding_box()
                assert modebar and modebar["width"] > 0, f"{div_id} has no modebar"
                texts = page.locator(f"#{div_id}-caption, #{div_id} .gtitle, #{div_id} .annotation")
                menus = page.locator(f"#{div_id} .updatemenu-header")
                assert menus.count() == (div_id in ("patching", "patching-cells")), div_id
                boxes = [(texts.nth(i).text_content(), texts.nth(i).bounding_box()) for i in range(texts.count())]
                for i in range(menus.count()):  # a menu covers no title and is not under the modebar
                    menu = menus.nth(i).bounding_box()
                    overlaps += [(div_id, "menu", text) for text, box in boxes if _overlaps(menu, box)]
                    boxes.append(("menu", menu))
                overlaps += [(div_id, "modebar", text) for text, box in boxes if _overlaps(modebar, box)]
            figure = page.locator("#attention-0")
            overlay = "JSON.stringify(document.getElementById('attention-0').data[1].z)"
            heads = "JSON.stringify(document.getElementById('attention-0').data.slice(2).map(t => t.z))"
            active = "document.getElementById('attention-0').layout.sliders[0].active"
            figure.scroll_into_view_if_needed()
            before_z, before_heads = page.evaluate(overlay), page.evaluate(heads)
            before_png, start = figure.screenshot(), page.evaluate(active)
            rail = page.locator("#attention-0 .slider-rail-rect").bounding_box()
            target = 0 if start != 0 else vlm.n_layers - 1  # the slider's far end from where it opened
            x = rail["x"] + 2 if target == 0 else rail["x"] + rail["width"] - 2
            page.mouse.click(x, rail["y"] + rail["height"] / 2)
            page.wait_for_function(f"{overlay} !== {json.dumps(before_z)}")
            after_png = figure.screenshot()
            assert page.evaluate(active) == target
            after_heads = json.loads(page.evaluate(heads))
            expected = json.loads(
                page.evaluate(
                    f"JSON.stringify(document.getElementById('attention-0').layout"
                    f".sliders[0].steps[{target}].args[0].z.slice(1))"
                )
            )
            assert after_heads == expected and after_heads != json.loads(before_heads), "the heads did not follow"
            # the patching menu (top left) switches from one change's map to the next
            visible = "document.getElementById('patching').data.map(t => t.visible)"
            assert page.evaluate(visible) == [True, False]
            page.locator("#patching .updatemenu-header-group").click()
            page.locator("#patching .updatemenu-dropdown-button", has_text="distractor").click()
            page.wait_for_function(f"JSON.stringify({visible}) === '[false,true]'")
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not problems, problems
    assert not overlaps, f"the modebar or a menu covers text: {overlaps}"
    assert before_png != after_png, "moving the slider did not change the drawn overlay"
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10 and len(np.unique(pixels)) > 50, "the screenshot is blank"
