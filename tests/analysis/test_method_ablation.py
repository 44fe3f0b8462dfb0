"""The method ablation: statistics on hand-made rows, a small real run (rows equal direct
``dola_generate`` calls; its row log resumed after a cut, refused with other settings, read
back when complete), the report and figure, and the CLIs' errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from interp.analysis import method_ablation
from interp.analysis.method_ablation import (
    AblationConfig,
    ablation_table,
    cells,
    gains,
    read_ablation_rows,
    render_paragraph,
    run_method_ablation,
    settings_path,
    write_outputs,
)
from interp.analysis.stats import mcnemar_exact
from interp.cli import main
from interp.decoding import dola_generate, prefill_cache
from interp.errors import InterpError
from interp.interventions import ReviewLayerMask
from interp.outputs import OutputLock, OutputLockedError

from ..conftest import TEST_IMAGE_SIZE, make_image, tiny_vlm


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


_CONFIG = dict(seeds=2, review_layer=2, dola_layers=[0, 1, 2], max_new_tokens=3, progress=False, temperature=1.5)


@pytest.fixture(scope="module")
def logged(tiny, tmp_path_factory):
    """An uninterrupted run's rows and its row log (copy it before changing it)."""
    out = tmp_path_factory.mktemp("ablation") / "rows.jsonl"
    return run_method_ablation(tiny, _items(tiny), config=AblationConfig(**_CONFIG), out=out), out


def _copy_log(src, directory):
    for path in (src, settings_path(src)):
        shutil.copy(path, directory / path.name)
    return directory / src.name


def _count_units(monkeypatch) -> list:
    """The key of every unit computed from now on (the per-unit compute wrapped)."""
    calls = []
    compute = method_ablation._unit_rows

    def counting(vlm, item, run, *args):
        calls.append(method_ablation._unit_key(run, item))
        return compute(vlm, item, run, *args)

    monkeypatch.setattr(method_ablation, "_unit_rows", counting)
    return calls


def test_run_equals_direct_calls(tiny, logged, tmp_path):
    config = AblationConfig(**_CONFIG)
    settings = config.resolved(tiny)
    rows, src = logged
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
    # one record per question and decoding run, in run order, holding that run's cells
    records = [json.loads(line) for line in src.read_text().splitlines()]
    assert [json.loads(r["key"]) for r in records] == [
        [d, s, i] for d, s in [("greedy", None), ("sample", 0), ("sample", 1)] for i in ("0", "1")
    ]
    assert all(len(r["rows"]) == 2 * 4 for r in records)
    back, stored = read_ablation_rows(src)
    key = ["item", "decoding", "seed", "mask", "dola"]
    pd.testing.assert_frame_equal(
        back.sort_values(key, na_position="first").reset_index(drop=True),
        rows.sort_values(key, na_position="first").reset_index(drop=True),
    )
    assert stored == {**settings, "model": tiny.name}
    # fewer seeds than the log holds: summarised as such, the same rows
    out = _copy_log(src, tmp_path)
    fewer = run_method_ablation(tiny, _items(tiny), config=AblationConfig(**{**_CONFIG, "seeds": 1}), out=out)
    pd.testing.assert_frame_equal(fewer, rows[rows.seed.isna() | (rows.seed == 0)].reset_index(drop=True))
    report = write_outputs(rows, settings, tmp_path / "report", n_boot=200)
    assert {"settings", "cells", "components", "paragraph"} <= set(report)
    cell = report["cells"][0]
    assert {"accuracy", "ci_low", "ci_high", "p_no_mask", "diff_no_dola_low"} <= set(cell)
    assert json.loads((tmp_path / "report" / "method_ablation.json").read_text())["n_items"] == 2
    assert (tmp_path / "report" / "method_ablation.png").stat().st_size > 0


def test_a_torn_last_line_is_recomputed(tiny, logged, tmp_path, monkeypatch):
    rows, src = logged
    out = _copy_log(src, tmp_path)
    lines = out.read_bytes().splitlines(keepends=True)
    kept = b"".join(lines[:3])
    out.write_bytes(kept + lines[3][: len(lines[3]) // 2])  # killed while writing the 4th unit
    calls = _count_units(monkeypatch)
    again = run_method_ablation(tiny, _items(tiny), config=AblationConfig(**_CONFIG), out=out)
    assert calls == [json.loads(line)["key"] for line in lines[3:]]  # the torn unit and those after it
    pd.testing.assert_frame_equal(again.drop(columns="seconds"), rows.drop(columns="seconds"))
    # the complete units are read back as written, their timings too
    read_back = [json.loads(json.loads(line)["key"]) for line in lines[:3]]
    assert read_back == [["greedy", None, "0"], ["greedy", None, "1"], ["sample", 0, "0"]]
    in_unit = again.decoding.eq("greedy") | (again.seed.eq(0) & again["item"].eq("0"))
    pd.testing.assert_frame_equal(again[in_unit], rows[in_unit])
    text = out.read_bytes()
    assert text.startswith(kept) and text.endswith(b"\n")
    assert [json.loads(line)["key"] for line in text.splitlines()] == [json.loads(line)["key"] for line in lines]


def test_other_settings_are_refused_untouched(tiny, logged, tmp_path, monkeypatch):
    _, src = logged
    out = _copy_log(src, tmp_path)
    before = {path: path.read_bytes() for path in (out, settings_path(out))}
    calls = _count_units(monkeypatch)
    with pytest.raises(InterpError) as refused:
        run_method_ablation(tiny, _items(tiny), config=AblationConfig(**{**_CONFIG, "ratio": 0.3}), out=out)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{out} holds a run with other settings")
    assert "ratio (0.2 there, 0.3 now)" in message
    with OutputLock(out), pytest.raises(OutputLockedError):  # a second writer
        run_method_ablation(tiny, _items(tiny), config=AblationConfig(**_CONFIG), out=out)
    settings_path(out).unlink()  # rows whose settings are unknown
    with pytest.raises(InterpError, match="no rows.settings.json, so their settings are unknown"):
        run_method_ablation(tiny, _items(tiny), config=AblationConfig(**_CONFIG), out=out)
    assert not settings_path(out).exists()
    settings_path(out).write_bytes(before[settings_path(out)])
    assert calls == [] and {path: path.read_bytes() for path in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl", "rows.settings.json"]
    # a log with a settings header and one answer per line: read, never continued
    old = tmp_path / "old.jsonl"
    header = {"settings": AblationConfig(**_CONFIG).resolved(tiny), "n_items": 2, "model": tiny.name}
    answers = [json.dumps(row) for row in json.loads(src.read_text().splitlines()[0])["rows"]]
    old.write_text("\n".join([json.dumps(header), *answers]) + "\n")
    written = old.read_bytes()
    with pytest.raises(InterpError, match="one-answer-per-line format"):
        run_method_ablation(tiny, _items(tiny), config=AblationConfig(**_CONFIG), out=old)
    assert old.read_bytes() == written and not settings_path(old).exists()
    frame, settings = read_ablation_rows(old)
    assert len(frame) == 8 and set(frame.decoding) == {"greedy"} and settings["seeds"] == 0


def test_a_complete_log_computes_nothing(tiny, logged, tmp_path, monkeypatch):
    rows, src = logged
    out = _copy_log(src, tmp_path)
    before = out.read_bytes()
    calls = _count_units(monkeypatch)
    again = run_method_ablation(tiny, _items(tiny), config=AblationConfig(**_CONFIG), out=out)
    assert calls == [] and out.read_bytes() == before
    pd.testing.assert_frame_equal(again, rows)  # the timings too: every row read back
    # fewer questions and seeds than the log holds: nothing computed either
    smaller = run_method_ablation(
        tiny, _items(tiny), config=AblationConfig(**{**_CONFIG, "seeds": 1}), limit=1, out=out
    )
    assert calls == [] and out.read_bytes() == before
    pd.testing.assert_frame_equal(smaller, rows[(rows["item"] == "0") & (rows.seed.isna() | (rows.seed == 0))])


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
