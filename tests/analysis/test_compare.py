"""``interp compare``: reproduce runs side by side on relative depth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interp.analysis.compare import compare_json, compare_markdown, compare_runs
from interp.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
ORGANISM_RUN = ROOT / "figures"  # the committed `interp reproduce --model organism` run
FROZEN_RUN = ROOT / "docs" / "organism-runs" / "2026-11-21c" / "frozen-reproduce"


def _report(path: Path, *, model: str, n_layers: int, fusion: list[int], baseline: float) -> Path:
    """A minimal reproduce report with a masking curve that is 0 on ``fusion`` layers."""
    per_layer = [
        {
            "variant": "single",
            "layer": l,
            "n": 20,
            "mean": 0.0 if l in fusion else baseline,
            "low": 0.0,
            "high": 1.0,
            "diff": -baseline if l in fusion else 0.0,
            "diff_low": -1.0,
            "diff_high": 0.0,
            "p_value": 0.001 if l in fusion else 1.0,
        }
        for l in range(n_layers)
    ]
    report = {
        "model": model,
        "dataset": "synthetic:test",
        "n_samples": 20,
        "n_layers": n_layers,
        "baseline_accuracy": {"mean": baseline, "low": baseline - 0.1, "high": baseline + 0.1},
        "masking": {
            "per_layer": per_layer,
            "findings": {"single": {"fusion_layers": fusion, "review_layer": None, "statement": "x"}},
        },
        "review_layer": {"layer": n_layers - 1, "source": "fallback"},
        "early_output": {
            "per_layer": [{"layer": l, "mean": l / n_layers, "low": 0, "high": 1, "n": 20} for l in range(n_layers)]
        },
    }
    path.mkdir(parents=True)
    (path / "report.json").write_text(json.dumps(report))
    return path


def test_committed_runs_side_by_side():
    comparison = compare_runs([ORGANISM_RUN, FROZEN_RUN])
    reports = [json.loads((d / "report.json").read_text()) for d in (ORGANISM_RUN, FROZEN_RUN)]
    summary = comparison.summary.set_index("model")
    for report in reports:
        row = summary.loc[report["model"]]
        assert row.baseline == report["baseline_accuracy"]["mean"]
        assert row.fusion_layers == report["masking"]["findings"]["single"]["fusion_layers"]
        assert row.review_layer_used == report["review_layer"]["layer"]
        masking = comparison.masking[comparison.masking.model == report["model"]]
        assert len(masking) == len(report["masking"]["per_layer"])
        layer7 = masking[(masking.variant == "window") & (masking.layer == 7)].iloc[0]
        source = next(r for r in report["masking"]["per_layer"] if r["variant"] == "window" and r["layer"] == 7)
        assert layer7["mean"] == source["mean"] and layer7.rel_depth == 7 / report["n_layers"]
        best = max(report["contrastive"]["comparison"], key=lambda r: r["diff"])
        assert row.contrastive_diff == best["diff"]
    text = compare_markdown(comparison)
    assert "organism-frozen" in text and "fusion layers" in text
    assert set(compare_json(comparison)) == {"summary", "masking", "relevant_share", "early_output", "contrastive"}


def test_relative_depth_aligns_models_of_different_depth(tmp_path):
    a = _report(tmp_path / "a", model="deep", n_layers=30, fusion=[0, 1, 2, 3, 4, 5], baseline=0.9)
    b = _report(tmp_path / "b", model="shallow", n_layers=10, fusion=[0, 1], baseline=0.8)
    comparison = compare_runs([a, b], labels=["A", "B"])
    assert list(comparison.summary.run) == ["A", "B"]
    spans = dict(zip(comparison.summary.run, comparison.summary.fusion_span))
    assert spans == {"A": "0-5 of 30 (0.00-0.17)", "B": "0-1 of 10 (0.00-0.10)"}
    early = comparison.early_output
    assert early[(early.run == "B") & (early.layer == 5)].rel_depth.iloc[0] == 0.5
    assert comparison.contrastive.empty and comparison.relevant_share.empty
    assert "Small samples" in compare_markdown(comparison)


def test_cli_writes_the_comparison(tmp_path):
    from interp.cli import main

    a = _report(tmp_path / "a", model="m1", n_layers=8, fusion=[0], baseline=0.7)
    out = tmp_path / "out"
    assert main(["compare", str(a), str(FROZEN_RUN), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"compare.md", "compare.json", "compare_curves.png", "compare_curves.pdf"}
    data = json.loads((out / "compare.json").read_text())
    assert [r["model"] for r in data["summary"]] == ["m1", "organism-frozen"]


def test_bad_run_directories_fail_with_one_line(tmp_path):
    from interp.cli import main

    with pytest.raises(InputError, match="no report.json"):
        compare_runs([tmp_path])
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(InputError, match="not an `interp reproduce` report"):
        compare_runs([tmp_path])
    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    a = _report(tmp_path / "a", model="m", n_layers=4, fusion=[], baseline=0.5)
    with pytest.raises(InputError, match="labels"):
        compare_runs([a], labels=["x", "y"])
