"""The method ablation: statistics on hand-made rows, a small real run (rows equal direct
``dola_generate`` calls, resume after a cut), the report and figure, and the CLIs' errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from interp.analysis.method_ablation import (
    AblationConfig,
    ablation_table,
    cells,
    gains,
    render_paragraph,
    run_method_ablation,
    write_outputs,
)
from interp.analysis.stats import mcnemar_exact
from interp.cli import main
from interp.decoding import dola_generate, prefill_cache
from interp.interventions import ReviewLayerMask

from .conftest import TEST_IMAGE_SIZE, make_image, tiny_vlm


def _rows(values: dict) -> pd.DataFrame:
    """Rows for every (decoding, seed, mask, dola) cell from ``values[(decoding, mask, dola)]``
    = per-seed lists of per-item scores."""
    out = []
    for (decoding, mask, dola), per_seed in values.items():
        for seed, scores in enumerate(per_seed):
            for item, score in enumerate(scores):
                out.append(
                    {
                        "item": str(item),
                        "kind": "",
                        "decoding": decoding,
                        "seed": None if decoding == "greedy" else seed,
                        "mask": mask,
                        "dola": dola,
                        "text": "",
                        "premature_layers": [],
                        "lmms": score,
                        "wcd": score,
                        "seconds": 0.0,
                    }
                )
    return pd.DataFrame(out)


def test_table_by_hand():
    greedy = [1, 1, 0, 0, 1, 0, 1, 1]
    masked = [1, 0, 0, 0, 1, 0, 0, 1]
    s0 = [1, 1, 1, 0, 1, 0, 1, 1]
    s1 = [1, 1, 0, 0, 1, 1, 1, 1]
    values = {
        ("greedy", "none", "none"): [greedy],
        ("greedy", "authors", "none"): [masked],
        ("sample", "none", "none"): [s0, s1],
        ("sample", "authors", "none"): [masked, masked],
    }
    table = ablation_table(_rows(values), n_boot=500)
    lm = table[table.metric == "lmms"].set_index(["decoding", "mask", "dola"])
    assert lm.loc[("greedy", "none", "none"), "accuracy"] == pytest.approx(np.mean(greedy))
    row = lm.loc[("greedy", "authors", "none")]
    assert row.diff_no_mask == pytest.approx(np.mean(masked) - np.mean(greedy))
    expected = mcnemar_exact(greedy, masked)
    assert (row.p_no_mask, row.gained_no_mask, row.lost_no_mask) == (
        expected["p_value"],
        expected["b_only"],
        expected["a_only"],
    )
    assert row.diff_no_mask_low <= row.diff_no_mask <= row.diff_no_mask_high
    sample = lm.loc[("sample", "none", "none")]
    per_item = (np.array(s0) + np.array(s1)) / 2
    assert sample.accuracy == pytest.approx(per_item.mean())
    assert sample.seed_sd == pytest.approx(np.std([np.mean(s0), np.mean(s1)], ddof=1))
    assert (sample.seed_min, sample.seed_max) == (np.mean(s0), np.mean(s1))
    assert sample.diff_greedy == pytest.approx(per_item.mean() - np.mean(greedy))
    # seed means are not 0/1: the sign-flip test of the per-question differences, here
    # enumerated by hand over every sign pattern of the non-zero differences
    import itertools

    d = per_item - np.array(greedy, dtype=float)
    d = d[np.abs(d) > 1e-12]
    sums = [abs(sum(s * x for s, x in zip(signs, d))) for signs in itertools.product((-1, 1), repeat=len(d))]
    assert sample.p_greedy == pytest.approx(np.mean([t >= abs(d.sum()) - 1e-9 for t in sums]))
    assert (sample.gained_greedy, sample.lost_greedy) == ((d > 0).sum(), (d < 0).sum())
    assert np.isnan(lm.loc[("greedy", "none", "none"), "diff_greedy"])
    long = gains(table)
    assert set(long.reference) == {"greedy", "no_mask"} and len(long) == 2 * 4  # 4 differences per metric
    paragraph = render_paragraph(
        table, {"temperature": 0.2, "seeds": 2, "ratio": 0.2, "review_layer": 3, "static_layer": 1}, 8
    )
    assert "authors' mask" in paragraph and "small sample" in paragraph


@pytest.fixture(scope="module")
def tiny():
    return tiny_vlm("llava")


def _items(vlm):
    size = TEST_IMAGE_SIZE
    return [
        (make_image(*size, seed=i), q, a)
        for i, (q, a) in enumerate([("What colour is the square?", "red"), ("How many circles?", "2")])
    ]


def test_run_equals_direct_calls_and_resumes(tiny, tmp_path):
    config = AblationConfig(
        seeds=2, review_layer=2, dola_layers=[0, 1, 2], max_new_tokens=3, progress=False, temperature=1.5
    )
    settings = config.resolved(tiny)
    out = tmp_path / "rows.jsonl"
    rows = run_method_ablation(tiny, _items(tiny), config=config, out=out)
    assert len(rows) == 2 * len(cells(settings)) == 2 * 3 * 2 * 4
    # every row is what dola_generate gives for that cell, called directly (no prefill reuse)
    for _, row in rows[rows["item"] == "1"].iterrows():
        prepared = tiny.prepare(_items(tiny)[1][0], _items(tiny)[1][1])
        layers = {"none": None, "logits": [0, 1, 2], "attention": [0, 1, 2], "static": [settings["static_layer"]]}
        sample = row.decoding == "sample"
        direct = dola_generate(
            tiny,
            prepared,
            layers=layers[row.dola],
            select="attention" if row.dola == "attention" else "logits",
            repetition_penalty=1.0 if row.dola == "none" else 1.2,
            penalize_prompt=False,
            max_new_tokens=3,
            do_sample=sample,
            temperature=1.5 if sample else None,
            seed=None if not sample else int(row.seed),
            interventions=[ReviewLayerMask(2)] if row["mask"] == "authors" else [],
        )
        assert (direct.text, direct.premature_layers) == (row.text, row.premature_layers)
    # resume: keep the header and the first 10 rows, cut the 11th mid-line
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:11]) + "\n" + lines[11][:20])
    again = run_method_ablation(tiny, _items(tiny), config=config, out=out)
    pd.testing.assert_frame_equal(again.drop(columns="seconds"), rows.drop(columns="seconds"))
    # fewer seeds than the file holds: summarised as such
    fewer = run_method_ablation(tiny, _items(tiny), config=AblationConfig(**{**config.__dict__, "seeds": 1}), out=out)
    assert set(fewer.seed.dropna()) == {0}
    report = write_outputs(again, settings, tmp_path / "report", n_boot=200)
    assert {"settings", "cells", "components", "paragraph"} <= set(report)
    cell = report["cells"][0]
    assert {"accuracy", "ci_low", "ci_high", "p_no_mask", "diff_no_dola_low"} <= set(cell)
    assert json.loads((tmp_path / "report" / "method_ablation.json").read_text())["n_items"] == 2
    assert (tmp_path / "report" / "method_ablation.png").stat().st_size > 0


def test_prefill_cache_equals_a_full_prefill(tiny):
    prepared = tiny.prepare(*_items(tiny)[0][:2])
    for masks in ([], [ReviewLayerMask(2)]):
        cache = prefill_cache(tiny, prepared, masks)
        for kwargs in (dict(layers=None), dict(layers=[0, 1, 2], select="attention")):
            full = dola_generate(tiny, prepared, max_new_tokens=3, interventions=masks, **kwargs)
            reused = dola_generate(tiny, prepared, max_new_tokens=3, prefill=cache, **kwargs)
            assert (reused.token_ids.tolist(), reused.premature_layers) == (
                full.token_ids.tolist(),
                full.premature_layers,
            )


def test_plot_has_one_panel_per_metric():
    from interp.plotting.method_ablation import plot_gains

    values = {("greedy", "none", "none"): [[1, 0, 1, 1]], ("greedy", "authors", "none"): [[1, 0, 0, 1]]}
    figure = plot_gains(gains(ablation_table(_rows(values), n_boot=100)))
    assert len(figure.axes) == 2 and [ax.get_title() for ax in figure.axes][1].startswith("authors'")


def test_cli_errors_are_one_line(capsys, tmp_path):
    assert main(["ablate-method", "--out", str(tmp_path), "--model", "tiny:llava", "--wcd-task", "pope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no WCD metric for task 'pope'") and err.count("\n") == 1
    assert main(["evaluate", "--model", "tiny:llava", "--task", "synthetic", "--metric", "wcd"]) == 2
    err = capsys.readouterr().err
    assert "no metric for task 'synthetic'" in err and err.count("\n") == 1
    assert main(["evaluate", "--model", "tiny:llava", "--task", "synthetic", "--seeds", "3"]) == 2
    assert "--seeds needs --temperature" in capsys.readouterr().err
    assert main(["evaluate", "--model", "tiny:llava", "--task", "synthetic", "--temperature", "0"]) == 2
    assert "--temperature must be > 0" in capsys.readouterr().err


def test_cli_evaluate_seeds(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert (
        main(
            [
                "evaluate",
                "--model",
                "tiny:llava",
                "--task",
                "synthetic",
                "--limit",
                "3",
                "--max-new-tokens",
                "2",
                "--temperature",
                "5.0",
                "--seeds",
                "2",
                "--out",
                str(out),
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert [run["seed"] for run in report["runs"]] == [0, 1]
    assert (tmp_path / "s.seed0.jsonl").exists() and (tmp_path / "s.seed1.jsonl").exists()
    accuracies = [run["summary"]["accuracy"] for run in report["runs"]]
    assert report["across_seeds"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    replies = [
        [
            json.loads(line)["filtered_resps"][0]
            for line in (tmp_path / f"s.seed{k}.jsonl").read_text().splitlines()
            if line.startswith('{"doc_id')
        ]
        for k in (0, 1)
    ]
    assert replies[0] != replies[1]  # the two seeds really sample differently at T=5
