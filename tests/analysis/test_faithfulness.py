"""The localisation benchmark (:mod:`interp.analysis.faithfulness`): scores by hand, rules on
hand-made rows, and the section end to end on a tiny model given planted layers."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import interp
from interp.analysis import faithfulness
from interp.analysis.faithfulness import METHODS, attention_mass_rows, check_truth, layer_scores
from interp.errors import InterpError

from ..conftest import sample_for


def test_scores_by_hand():
    assert layer_scores([4, 5, 6], [4, 5, 6]) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert layer_scores(range(0, 7), [4, 5, 6]) == pytest.approx({"precision": 3 / 7, "recall": 1.0, "f1": 0.6})
    assert layer_scores([5], [4, 5, 6]) == pytest.approx({"precision": 1.0, "recall": 1 / 3, "f1": 0.5})
    assert layer_scores([], [4, 5, 6]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def _sweep_rows(variant: str, hurt: set[int], n_items: int = 40, n_layers: int = 6) -> pd.DataFrame:
    """Every item right without the edit; wrong with it at the ``hurt`` layers."""
    rows = [{"item": f"q{i}", "variant": "baseline", "layer": -1, "correct": 1.0} for i in range(n_items)]
    rows += [
        {"item": f"q{i}", "variant": variant, "layer": layer, "correct": 0.0 if layer in hurt else 1.0}
        for i in range(n_items)
        for layer in range(n_layers)
    ]
    return pd.DataFrame(rows)


def test_rules_on_hand_made_rows():
    rule = {m.name: m.rule for m in METHODS}
    assert rule["masking_single"](_sweep_rows("single", {0, 1, 2}), 200) == [0, 1, 2]
    assert rule["knockout_text"](_sweep_rows("knockout_text", {3}), 200) == [3]
    # a significant window at start 3 spans layers 3-5 (capped at the last layer)
    assert rule["knockout_text_window"](_sweep_rows("knockout_text", {3}), 200) == [3, 4, 5]
    mass = pd.DataFrame(
        {"item": ["a"] * 4 + ["b"] * 4, "layer": [0, 1, 2, 3] * 2, "mass": [0.001, 0.2, 0.3, 0.019] * 2}
    )
    assert rule["attention_mass"](mass, 0) == [1, 2]  # 0.019 < 10% of 0.3
    edges = pd.DataFrame(
        {
            "item": ["a"] * 4 + ["b"] * 4,
            "layer": [0, 1, 2, 3] * 2,
            "queries": ["text"] * 8,
            "estimate": [-0.5, 0.2, -0.04, -0.06, -0.3, 0.0, -0.06, -0.02],  # mean drops 0.4, -0.1, 0.05, 0.04
        }
    )
    assert rule["attribution_text"](edges, 0) == [0, 2]  # 0.04 < 10% of 0.4 <= 0.05
    assert rule["attribution_last"](edges, 0) == []  # no rows for those queries


def test_attention_mass_equals_hf_attention_weights():
    vlm = interp.load("tiny:llava", attn_implementation="eager")
    sample = sample_for(vlm)
    item = interp.analysis.items.Item(id="x", image=None, question="", answers=("red",))
    vlm_prepare = vlm.prepare
    vlm.prepare = lambda image, question: sample  # the item's input is the prepared sample
    try:
        rows = attention_mass_rows(vlm, [item], progress=False)
    finally:
        vlm.prepare = vlm_prepare
    import torch

    with torch.no_grad():
        out = vlm.model(**sample.inputs, output_attentions=True)
    image = sample.image_positions
    after = torch.arange(sample.seq_len) > int(image.max())
    for layer, weights in enumerate(out.attentions):
        expected = weights[0].mean(0)[after][:, image].sum(-1).mean()
        assert rows[rows.layer == layer].mass.item() == pytest.approx(float(expected), rel=1e-4)


def test_a_model_without_planted_layers_is_refused_in_one_line(tmp_path, capsys):
    from interp.cli import main

    vlm = interp.load("tiny:llava")
    with pytest.raises(InterpError, match="no known reading layers"):
        check_truth(vlm)
    out = tmp_path / "bench"
    assert main(["faithfulness", "--model", "tiny:llava", "--out", str(out), "--limit", "2"]) == 2
    assert "no known reading layers" in capsys.readouterr().err
    assert not out.exists()


def test_the_section_on_a_tiny_model_with_planted_layers_resumes(tmp_path, monkeypatch):
    from interp.analysis.reproduce import ReproduceConfig, reproduce
    from interp.data.synthetic import SyntheticVQA

    vlm = interp.load("tiny:llava")
    vlm.config.planted_layers = [1, 2]
    data = SyntheticVQA("test", image_size=vlm.scene_size)
    config = ReproduceConfig(patching_pairs=0, lens_samples=0, n_boot=100, progress=False)
    report = reproduce(vlm, data, tmp_path / "run", dataset="synthetic:test", limit=4, config=config)
    section = report["localisation"]
    assert section["planted_layers"] == [1, 2] and section["n"] == 4 and section["small_sample"]
    names = [row["method"] for row in section["methods"]]
    assert names == [m.name for m in METHODS]  # every method had its rows
    for row in section["methods"]:
        assert row["f1_low"] <= row["f1_high"] and 0 <= row["f1"] <= 1
    table = pd.read_csv(tmp_path / "run" / "localisation.csv")
    assert list(table.method) == names
    assert (tmp_path / "run" / "localisation.png").stat().st_size > 0
    assert "Which method finds where the image is read" in (tmp_path / "run" / "report.md").read_text()
    log = (tmp_path / "run" / "rows" / "localisation.jsonl").read_text().splitlines()
    assert len(log) == 4 and set(json.loads(log[0])["rows"][0]) == {"sweep_text", "sweep1", "mass", "edges"}

    def never(*args, **kwargs):
        raise AssertionError("a finished question was computed again")

    monkeypatch.setattr(faithfulness, "item_tables", never)
    again = reproduce(vlm, data, tmp_path / "run", dataset="synthetic:test", limit=4, config=config)
    assert json.dumps(again["localisation"], sort_keys=True) == json.dumps(section, sort_keys=True)


def test_the_table_of_several_runs_reads_their_reports(tmp_path):
    from interp.analysis.faithfulness import benchmark_table
    from interp.cli import main

    def run(name: str, layers: list[int], f1: float):
        folder = tmp_path / name
        folder.mkdir()
        method = {
            "method": "attention_mass",
            "reported": layers,
            "precision": 1.0,
            "recall": f1,
            "f1": f1,
            "precision_low": 1.0,
            "precision_high": 1.0,
            "recall_low": f1,
            "recall_high": f1,
            "f1_low": f1 - 0.1,
            "f1_high": f1,
            "n": 8,
            "layer_forwards_per_question": 30,
        }
        report = {"localisation": {"planted_layers": layers, "n": 8, "small_sample": True, "methods": [method]}}
        (folder / "report.json").write_text(json.dumps(report))
        return str(folder)

    runs = {"early": run("early", [4, 5, 6], 1.0), "late": run("late", [16, 17, 18], 0.8)}
    table = benchmark_table(runs)
    assert list(table.organism) == ["early", "late"] and list(table.f1) == [1.0, 0.8]
    assert table.planted_layers.tolist() == [[4, 5, 6], [16, 17, 18]]
    out = tmp_path / "table"
    assert main(["faithfulness", "--out", str(out), "--table", *(f"{k}={v}" for k, v in runs.items())]) == 0
    assert pd.read_csv(out / "localisation_benchmark.csv").f1.tolist() == [1.0, 0.8]
    assert (out / "localisation_matrix.png").stat().st_size > 0
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "report.json").write_text("{}")
    with pytest.raises(InterpError, match="has no localisation section"):
        benchmark_table({"plain": str(tmp_path / "plain")})
    assert main(["faithfulness", "--out", str(out), "--table", "nameonly"]) == 2
