"""The paper's analyses, checked against independent computations on tiny models.

* teacher forcing vs. real greedy generation and a plain HF forward;
* the fast (prefix-reuse) sweep vs. the naive per-layer re-run and vs. plain PyTorch
  forward-pre-hooks, across mask types (SDPA None mask, eager float masks, Gemma3's
  bidirectional/sliding masks, Qwen2-VL's M-RoPE);
* contrastive masking in one trace vs. the fast path and a hand computation;
* statistics and distances vs. hand-worked numbers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from interp.analysis.attention import attention_maps, layer_distances, persistent_noise, relevant_mass
from interp.analysis.contrastive import compare_to_baseline, contrastive_eval
from interp.interventions.distance import hellinger, jsd
from interp.analysis.items import as_items
from interp.analysis.logit_lens import early_output
from interp.analysis.stats import bootstrap_mean_ci, detect_fusion, layer_effects, mcnemar_exact, per_layer_ci
from interp.analysis.sweep import VARIANTS, masking_sweep
from interp.analysis.teacher import teacher_force
from interp.data.synthetic import SyntheticVQA
from interp.errors import InterpError
from interp.interventions.contrastive import bottom_fraction, contrast

from ..conftest import square_items, tiny_vlm


def _hf_logprobs(vlm, tf):
    """Plain HF forward (no nnsight): log-probs of the targets at the scored positions."""
    with torch.no_grad():
        logits = vlm.model(**tf.prepared.inputs).logits[0].float()
    logprobs = torch.log_softmax(logits[tf.positions], -1)
    return logprobs.gather(1, tf.targets[:, None]).squeeze(1), logits[tf.positions].argmax(-1)


def test_teacher_forcing_matches_generation_and_plain_forward():
    vlm = tiny_vlm("llava", "sdpa")
    item = square_items(vlm, 1)[0]
    prepared = vlm.prepare(item.image, item.question)
    generated = vlm.run(prepared, generate=True, max_new_tokens=4)
    tokenizer = vlm.processor.tokenizer
    text = tokenizer.decode(generated.sequences[0][:3])
    tf = teacher_force(vlm, prepared, text)
    assert tf.prompt_len == prepared.seq_len and tf.last_prompt_position == prepared.seq_len - 1
    picked, argmax = _hf_logprobs(vlm, tf)
    run = vlm.run(tf.prepared, logit_positions=tf.positions.tolist())
    logprob, match = tf.score(run.logits[0])
    assert logprob == pytest.approx(float(picked[: tf.n_answer].sum()), abs=1e-4)
    assert match == bool((argmax == tf.targets).all())
    # the greedy continuation itself is matched token for token
    assert torch.equal(argmax[: tf.n_answer], generated.sequences[0][: tf.n_answer])
    other = teacher_force(vlm, prepared, "zzz qqq")
    _, other_match = other.score(vlm.run(other.prepared, logit_positions=other.positions.tolist()).logits[0])
    assert other_match is False


@pytest.mark.parametrize(
    "model_type,attn", [("llava", "sdpa"), ("llava", "eager"), ("gemma3", "sdpa"), ("qwen2_vl", "sdpa")]
)
def test_fast_sweep_equals_naive_rerun(model_type, attn):
    vlm = tiny_vlm(model_type, attn)
    items = square_items(vlm, 2)
    kwargs = dict(variants=VARIANTS, window=2, progress=False)
    fast = masking_sweep(vlm, items, mode="fast", **kwargs)
    naive = masking_sweep(vlm, items, mode="naive", **kwargs)
    assert fast.attrs["mode"] == "fast" and naive.attrs["mode"] == "naive"
    assert len(fast) == len(naive) == 2 * (1 + len(VARIANTS) * vlm.n_layers)
    merged = fast.merge(naive, on=["item", "variant", "layer"], suffixes=("_fast", "_naive"))
    assert (merged.logprob_fast - merged.logprob_naive).abs().max() < 1e-4
    assert (merged.correct_fast == merged.correct_naive).all()
    # the edits matter: masking every layer from 0 moves the answer's log-probability
    cumulative0 = fast[(fast.variant == "cumulative") & (fast.layer == 0)].logprob.values
    baseline = fast[fast.variant == "baseline"].logprob.values
    assert np.abs(cumulative0 - baseline).max() > 1e-3


def test_sweep_matches_plain_pytorch_hooks():
    """Scaling image tokens at layer l with a forward-pre-hook gives the sweep's numbers."""
    vlm = tiny_vlm("llava", "sdpa")
    item = square_items(vlm, 1)[0]
    sweep = masking_sweep(vlm, [item], variants=("single",), mode="fast", progress=False)
    prepared = vlm.prepare(item.image, item.question)
    tf = teacher_force(vlm, prepared, item.answers[0])
    positions = prepared.image_positions
    for layer in range(vlm.n_layers):

        def scale(module, args, kwargs):
            hidden = args[0].clone() if args else kwargs["hidden_states"].clone()
            hidden[:, positions] *= 1e-9
            if args:
                return (hidden,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        block = vlm.adapter.resolve(vlm.model, "layers")[layer]
        handle = block.register_forward_pre_hook(scale, with_kwargs=True)
        try:
            picked, _ = _hf_logprobs(vlm, tf)
        finally:
            handle.remove()
        expected = float(picked[: tf.n_answer].sum())
        got = float(sweep[(sweep.variant == "single") & (sweep.layer == layer)].logprob.iloc[0])
        assert got == pytest.approx(expected, abs=1e-4)


def test_fast_sweep_refused_where_it_cannot_apply():
    vlm = tiny_vlm("qwen3_vl", "sdpa")
    items = square_items(vlm, 1)
    with pytest.raises(InterpError, match="DeepStack"):
        masking_sweep(vlm, items, mode="fast", progress=False)
    auto = masking_sweep(vlm, items, variants=("single",), progress=False)
    assert auto.attrs["mode"] == "naive"
    with pytest.raises(InterpError, match="unknown sweep variant"):
        masking_sweep(vlm, items, variants=("nope",), progress=False)


def test_contrastive_fast_equals_one_trace_intervention():
    vlm = tiny_vlm("llava", "sdpa")
    items = square_items(vlm, 2)
    review = vlm.n_layers - 1
    kwargs = dict(review_layer=review, fusion_layers=[0], crop=False, progress=False)
    fast = contrastive_eval(vlm, items, mode="fast", **kwargs)
    naive = contrastive_eval(vlm, items, mode="naive", **kwargs)
    assert (fast.logprob - naive.logprob).abs().max() < 1e-4
    assert (fast.pre_layer == naive.pre_layer).all()
    table = compare_to_baseline(fast)
    assert set(table.columns) >= {"diff", "diff_low", "diff_high", "p_value"}


def test_contrast_by_hand():
    ref = torch.tensor([0.1, 0.5, 0.4])
    candidates = {0: torch.tensor([0.1, 0.5, 0.4]), 1: torch.tensor([0.6, 0.2, 0.2])}
    pre, c = contrast(ref, candidates, "jsd")
    assert pre == 1  # the farther candidate
    assert torch.allclose(c, torch.tensor([0.0, 0.3, 0.2]))
    assert bottom_fraction(torch.tensor([0.3, 0.0, 0.2, 0.1]), 0.5).tolist() == [False, True, False, True]


def test_distances_by_hand():
    p = torch.tensor([0.5, 0.5, 0.0])
    q = torch.tensor([0.0, 0.5, 0.5])
    m = np.array([0.25, 0.5, 0.25])
    kl = lambda a: sum(x * math.log2(x / y) for x, y in zip(a, m) if x > 0)  # noqa: E731
    assert float(jsd(p, q)) == pytest.approx(0.5 * kl([0.5, 0.5, 0]) + 0.5 * kl([0, 0.5, 0.5]), abs=1e-6)
    assert float(hellinger(p, q)) == pytest.approx(math.sqrt(1 - 0.5), abs=1e-6)
    assert float(jsd(p, p)) == pytest.approx(0.0, abs=1e-7) and float(hellinger(p, p)) == pytest.approx(0, abs=1e-6)
    # unnormalised weights are renormalised
    assert float(hellinger(2 * p, q)) == pytest.approx(float(hellinger(p, q)), abs=1e-6)


def test_mcnemar_and_bootstrap_by_hand():
    a = [1, 1, 1, 1, 0, 0, 1, 0]
    b = [1, 0, 0, 0, 0, 1, 1, 0]
    result = mcnemar_exact(a, b)
    # discordant: a only = 3, b only = 1; p = 2 * P[X <= 1], X ~ Bin(4, 1/2) = 2 * 5/16
    assert (result["a_only"], result["b_only"]) == (3, 1)
    assert result["p_value"] == pytest.approx(10 / 16)
    mean, low, high = bootstrap_mean_ci([0, 1, 1, 1], n_boot=500)
    assert mean == 0.75 and 0 <= low <= mean <= high <= 1


def _effects(drops: dict[int, float], n_layers: int = 12, n_items: int = 60) -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(0)
    for item in range(n_items):
        rows.append({"item": str(item), "kind": "", "variant": "baseline", "layer": -1, "correct": 1.0, "logprob": 0.0})
        for layer in range(n_layers):
            wrong = rng.uniform() < drops.get(layer, 0.0)
            rows.append(
                {
                    "item": str(item),
                    "kind": "",
                    "variant": "single",
                    "layer": layer,
                    "correct": 0.0 if wrong else 1.0,
                    "logprob": 0.0,
                }
            )
    return layer_effects(pd.DataFrame(rows), n_boot=400)


def test_detect_fusion_and_review_layers():
    finding = detect_fusion(_effects({1: 0.8, 2: 0.9, 3: 0.7, 10: 0.6}))
    assert finding.fusion_layers == [1, 2, 3]
    assert finding.review_layer == 10
    assert "review layer 10" in finding.statement
    none = detect_fusion(_effects({}))
    assert none.fusion_layers == [] and none.review_layer is None and "No layer" in none.statement
    no_review = detect_fusion(_effects({2: 0.9, 3: 0.9}))
    assert no_review.fusion_layers == [2, 3] and no_review.review_layer is None


def _sweep_by_hand(n_items: int, wrong: dict[int, int], n_layers: int = 12) -> pd.DataFrame:
    """Every item right without masking; at layer l the first ``wrong[l]`` items wrong."""
    rows = []
    for item in range(n_items):
        rows.append({"item": str(item), "kind": "", "variant": "baseline", "layer": -1, "correct": 1.0, "logprob": 0.0})
        rows += [
            {
                "item": str(item),
                "kind": "",
                "variant": "single",
                "layer": layer,
                "correct": 0.0 if item < wrong.get(layer, 0) else 1.0,
                "logprob": 0.0,
            }
            for layer in range(n_layers)
        ]
    return pd.DataFrame(rows)


def test_too_small_a_sample_is_called_too_small_not_significant():
    # n = 2, both items lost at layers 1 and 2: the bootstrap CI is [-1, -1] and McNemar's
    # p = 2 * P[X <= 0], X ~ Bin(2, 1/2) = 0.5 -- no test on 2 items can be significant
    effects = layer_effects(_sweep_by_hand(2, {1: 2, 2: 2}), n_boot=400)
    layer1 = effects[effects.layer == 1].iloc[0]
    assert (layer1.fw_low, layer1.fw_high, layer1.p_value) == (-1.0, -1.0, 0.5)
    assert layer1.fw_alpha == pytest.approx(0.05 / 12) and layer1.min_p_value == 0.5 and bool(layer1.small_sample)
    finding = detect_fusion(effects)
    assert finding.too_small and finding.n == 2 and finding.significant_layers == [] and finding.fusion_layers == []
    # the fewest items that can reach 0.05 / 12: 2 / 2**9 = 0.0039 <= 0.00417 < 2 / 2**8
    assert finding.min_n == 9 and finding.review_layer is None
    assert finding.statement.startswith("n too small: with n = 2 items the exact paired test can reach at best p = 0.5")
    assert "it needs at least 9 items" in finding.statement and "significant" not in finding.statement.split("so no")[0]
    assert finding.to_dict()["too_small"] is True

    assert detect_fusion(layer_effects(_sweep_by_hand(8, {1: 8, 2: 8}), n_boot=400)).too_small
    nine = detect_fusion(layer_effects(_sweep_by_hand(9, {1: 9, 2: 9}), n_boot=400))
    assert not nine.too_small and nine.fusion_layers == [1, 2] and nine.small_sample
    assert nine.statement.endswith("Small sample (n = 9 < 30): the bootstrap CIs are rough.")


def test_a_significant_layer_needs_the_exact_test_too():
    # 12 items, 5 lost at layer 3: the family-wise bootstrap CI lies below zero (resampling
    # 12 items avoids all 5 losers with probability (7/12)**12 = 0.0016 < alpha / 2), but
    # McNemar's p = 2 / 2**5 = 0.0625 is far above 0.05 / 12
    effects = layer_effects(_sweep_by_hand(12, {3: 5, 7: 12}), n_boot=2000)
    layer3 = effects[effects.layer == 3].iloc[0]
    assert layer3.fw_high < 0 and layer3.p_value == pytest.approx(0.0625)
    finding = detect_fusion(effects)
    assert finding.significant_layers == [7] and finding.fusion_layers == [7]


def test_small_samples_are_flagged_in_every_ci_table():
    frame = pd.DataFrame({"layer": [0] * 29 + [1] * 30, "value": np.arange(59.0)})
    table = per_layer_ci(frame, "value", n_boot=200)
    assert list(table.n) == [29, 30] and list(table.small_sample) == [True, False]
    assert list(layer_effects(_sweep_by_hand(30, {}, n_layers=2), n_boot=100).small_sample) == [False, False]


def test_the_committed_run_keeps_its_findings():
    """figures/: the sweep CSV and the report written from it; the detector still finds what the report says."""
    from pathlib import Path

    figures = Path(__file__).parents[2] / "figures"
    report = json.loads((figures / "report.json").read_text())
    effects = layer_effects(
        pd.read_csv(figures / "masking_sweep.csv"), n_boot=report["config"]["n_boot"], seed=report["seed"]
    )
    assert set(report["masking"]["findings"]) == set(effects.variant)
    for variant, expected in report["masking"]["findings"].items():
        finding = detect_fusion(effects, variant=variant, baseline=report["baseline_accuracy"]["mean"]).to_dict()
        for key in ("fusion_layers", "review_layer", "significant_layers", "statement"):
            assert finding[key] == expected[key], (variant, key)
        assert finding["too_small"] is False and finding["small_sample"] is False


def test_attention_maps_and_masses_by_hand():
    vlm = tiny_vlm("llava", "eager")
    item = square_items(vlm, 1)[0]
    maps = attention_maps(vlm, [item], progress=False)
    prepared = vlm.prepare(item.image, item.question)
    with torch.no_grad():
        out = vlm.model(**prepared.inputs, output_attentions=True)
    for layer in range(vlm.n_layers):
        expected = out.attentions[layer][0, :, -1, prepared.image_positions].mean(0)
        got = torch.tensor(maps[maps.layer == layer].sort_values("token").attention.values)
        assert torch.allclose(got, expected.float(), atol=1e-6)
    mass = relevant_mass(maps)
    layer0 = maps[maps.layer == 0]
    grid = layer0[layer0.row >= 0]
    share = grid[grid.relevant.astype(bool)].attention.sum() / grid.attention.sum()
    assert mass[mass.layer == 0].relevant_share.iloc[0] == pytest.approx(share)
    assert mass.relevant_area.iloc[0] == pytest.approx(grid.relevant.astype(bool).mean())
    noise = persistent_noise(maps, k=2, persist=0.5)
    assert not noise.empty and not any(
        bool(grid[(grid.row == r) & (grid.col == c)].relevant.iloc[0]) for r, c in zip(noise.row, noise.col)
    )
    distances = layer_distances(maps, reference_layer=1)
    assert distances[distances.layer == 1].jsd.abs().max() < 1e-7


def test_early_output_last_layer_is_the_model_output():
    vlm = tiny_vlm("llava", "sdpa")
    item = square_items(vlm, 1)[0]
    lens = early_output(vlm, [item], progress=False)
    tf = teacher_force(vlm, vlm.prepare(item.image, item.question), item.answers[0])
    picked, _ = _hf_logprobs(vlm, tf)
    last = lens[lens.layer == vlm.n_layers - 1].logprob.iloc[0]
    assert last == pytest.approx(float(picked[: tf.n_answer].sum()), abs=1e-4)
    assert lens.layer.nunique() == vlm.n_layers


@pytest.mark.parametrize("model_type", ["qwen2_vl", "idefics3"])
def test_analyses_run_unchanged_on_other_families(model_type):
    vlm = tiny_vlm(model_type, "sdpa")
    items = square_items(vlm, 1)
    sweep = masking_sweep(vlm, items, variants=("single", "knockout_last"), progress=False)
    assert len(sweep) == 1 + 2 * vlm.n_layers
    maps = attention_maps(vlm, items, progress=False)
    assert not relevant_mass(maps).empty
    assert len(early_output(vlm, items, progress=False)) == vlm.n_layers
    rows = contrastive_eval(vlm, items, review_layer=vlm.n_layers - 1, progress=False)
    assert set(rows.method) == {"baseline", "v1", "v2"}


def test_analyses_under_remote_local_equal_local():
    vlm = tiny_vlm("llava", "sdpa")
    items = square_items(vlm, 1)
    local = masking_sweep(vlm, items, variants=("single",), mode="naive", progress=False)
    remote = masking_sweep(vlm, items, variants=("single",), mode="naive", remote="local", progress=False)
    assert np.allclose(local.logprob, remote.logprob, atol=1e-5)
    maps_local = attention_maps(vlm, items, progress=False)
    maps_remote = attention_maps(vlm, items, remote="local", progress=False)
    assert np.allclose(maps_local.attention, maps_remote.attention, atol=1e-6)
    a = contrastive_eval(vlm, items, review_layer=vlm.n_layers - 1, mode="naive", crop=False, progress=False)
    b = contrastive_eval(
        vlm, items, review_layer=vlm.n_layers - 1, mode="naive", crop=False, remote="local", progress=False
    )
    assert np.allclose(a.logprob, b.logprob, atol=1e-5) and (a.pre_layer == b.pre_layer).all()


def test_items_from_synthetic_and_errors():
    items = as_items(SyntheticVQA("test", seed=0), limit=3)
    assert [i.id for i in items] == ["test-000000", "test-000001", "test-000002"]
    assert items[0].relevant_mask(6, 6).equal(SyntheticVQA("test", seed=0)[0].relevant_mask(6, 6))
    with pytest.raises(InterpError):
        as_items([])
    with pytest.raises(InterpError):
        as_items([object()])


def test_items_from_an_evaluation_task_use_its_prompt_and_metric():
    from interp.data.tasks import load_task

    task = load_task("synthetic", split="test", limit=3)
    items = as_items(task)
    assert [i.answers[0] for i in items] == [d.targets[0] for d in task.docs]
    assert items[0].question == task.prompt(task.docs[0])
    assert items[0].score(task.docs[0].targets[0]) == 1.0 and items[0].score("zzz") == 0.0


FIGURES = (
    "masking_curve",
    "attention_heatmaps",
    "relevant_vs_noise",
    "layer_distance",
    "early_output",
    "contrastive_example",
    "accuracy_vs_rho",
    "pre_layer_histogram",
)


def test_reproduce_writes_every_figure_and_the_report(tmp_path):
    import json

    from interp.cli import main

    code = main(
        [
            "reproduce",
            "--model",
            "tiny:llava",
            "--out",
            str(tmp_path),
            "--limit",
            "3",
            "--n-boot",
            "100",
            "--patching",
            "2",
            "--lens",
            "3",
        ]
    )
    assert code == 0
    for name in FIGURES:
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
        assert (tmp_path / f"{name}.pdf").exists()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n_samples"] == 3 and report["model"] == "tiny:llava" and report["dataset"] == "synthetic:test"
    single = [r for r in report["masking"]["per_layer"] if r["variant"] == "single"]
    assert len(single) == report["n_layers"] and all(r["low"] <= r["mean"] <= r["high"] for r in single)
    assert {"fusion_layers", "review_layer", "statement"} <= set(report["masking"]["findings"]["single"])
    assert len(report["attention"]["relevant_share_per_layer"]) == report["n_layers"]
    assert report["contrastive"]["comparison"] and "p_value" in report["contrastive"]["comparison"][0]
    assert {"torch", "transformers", "nnsight", "interp"} <= set(report["versions"])
    assert "Fusion and review layers" in (tmp_path / "report.md").read_text()
    # the synthetic benchmark's sections are on by default (here on 2 pairs and 3 samples)
    assert report["patching"]["n_pairs"] == 2 and report["image_lens"]["n_samples"] == 3
    assert (tmp_path / "patching_heatmap.png").exists() and (tmp_path / "image_lens_accuracy.png").exists()
    from interp.analysis.reproduce import ReproduceConfig

    assert ReproduceConfig().patching_pairs == 60 and ReproduceConfig().lens_samples == 60


def test_paired_sign_flip_is_mcnemar_on_binary_outcomes_and_exact_on_means():
    from interp.analysis.stats import paired_sign_flip

    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 2, 40), rng.integers(0, 2, 40)
    assert paired_sign_flip(a, b)["p_value"] == mcnemar_exact(a, b)["p_value"]
    # hand-worked: differences +0.5, +0.5, +1, -0.5 (and two zeros), |sum| = 1.5. A sign pattern
    # gives 0.5 k + s with k = the signed count of the three 0.5s (3, 1, -1, -3 in 1, 3, 3, 1
    # patterns) and s = +-1: |sum| >= 1.5 for (3, +1), (1, +1) x 3, (-1, -1) x 3, (-3, -1): 8 of 16
    a = np.array([0.0, 0.0, 0.0, 0.5, 1.0, 1.0])
    b = np.array([0.5, 0.5, 1.0, 0.0, 1.0, 1.0])
    test = paired_sign_flip(a, b)
    sums = [
        abs(x * 0.5 + y * 0.5 + z * 1.0 + w * -0.5) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1) for w in (-1, 1)
    ]
    assert test["exact"] and test["p_value"] == pytest.approx(np.mean([t >= 1.5 for t in sums])) == pytest.approx(
        8 / 16
    )
    assert (test["b_only"], test["a_only"]) == (3, 1)
    # McNemar's threshold would have called the 0.5s right: a different (and tie-dependent) answer
    assert mcnemar_exact(a, b)["p_value"] != test["p_value"]
    # beyond 20 changed items: seeded Monte Carlo, close to the exact value of a binomial-like case
    a, b = np.zeros(30), np.full(30, 0.5)
    b[:5] = 0.0
    mc = paired_sign_flip(a, b, n_resamples=40_000, seed=1)
    assert not mc["exact"] and mc["p_value"] == pytest.approx(2 * 0.5**25, abs=1e-3)
    assert paired_sign_flip(a, a)["p_value"] == 1.0
