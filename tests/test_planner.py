"""The run planner (``interp reproduce --dry-run``) against hand-worked arithmetic."""

from __future__ import annotations

import torch

from interp.options import SWEEP_VARIANTS
from interp.planner import ANSWER_TOKENS, largest_forward, plan_sample, weight_bytes

from .conftest import sample_for, tiny_vlm


def test_plan_by_hand():
    vlm = tiny_vlm("llava", "sdpa")
    prepared = sample_for(vlm)
    text = vlm.config.get_text_config()
    L, d, seq = vlm.n_layers, text.hidden_size, prepared.seq_len
    kv_token = 2 * text.num_key_value_heads * (d // text.num_attention_heads) * 2  # bfloat16
    rows = seq - int(prepared.image_positions.min())
    plan = plan_sample(
        vlm.adapter,
        vlm.config,
        torch.bfloat16,
        prepared,
        variants=("single", "knockout_last"),
        scoring="generate",
        decode_batch=3,
        max_new_tokens=4,
        weights=1000,
    )
    assert plan.memory["weights"] == 1000
    assert plan.memory["clean_prefix"] == L * seq * (d * 2 + kv_token)
    assert plan.memory["clean_forward"] == seq * (4 * d + 3 * text.intermediate_size + text.vocab_size) * 2
    assert plan.memory["restart_states"] == 3 * rows * d * 2  # one decode slice's conditions
    assert plan.memory["decode_kv"] == 2 * 3 * kv_token * L * (seq + 4)
    assert plan.memory["scored_logits"] == (2 * L + 1) * ANSWER_TOKENS * text.vocab_size * 4
    assert plan.memory["attention_scores"] == 0  # SDPA
    # clean pass L layers x seq rows; "single" at layer l runs L - l layers on the rows from the first
    # image token, "knockout_last" L - l layers on the last prompt row and the answer's
    after = sum(L - l for l in range(L))
    assert plan.work["layer_applications"] == L + 2 * after
    assert plan.work["layer_rows"] == L * seq + rows * after + (1 + ANSWER_TOKENS) * after
    assert plan.peak_bytes == sum(plan.memory.values())
    eager = plan_sample(vlm.adapter, vlm.config, torch.float32, prepared, attn_implementation="eager", weights=0)
    question_rows = seq - int(prepared.question_positions.min())
    forwards = largest_forward(
        SWEEP_VARIANTS, L, {"image": rows, "knockout_last": 1 + ANSWER_TOKENS, "knockout_question": question_rows}, 8
    )
    assert eager.memory["attention_scores"] == max(n * r for n, r, _ in forwards) * text.num_attention_heads * seq * 4
    assert eager.memory["decode_kv"] == 0 and eager.memory["restart_states"] == 5 * L * rows * d * 4


def test_weights_are_counted_without_loading_them():
    vlm = tiny_vlm("llava", "sdpa")
    n = sum(p.numel() for p in vlm.model.parameters())
    assert weight_bytes(vlm.config, torch.float16) == 2 * n


def test_dry_run_prints_the_plan_and_runs_nothing(capsys, tmp_path):
    from interp.cli import main

    out = tmp_path / "run"
    assert main(["reproduce", "--model", "tiny:llava", "--out", str(out), "--dry-run", "--scoring", "generate"]) == 0
    printed = capsys.readouterr().out
    assert "estimated peak" in printed and "decode_kv" in printed and "layer_rows" in printed
    assert not out.exists() or not any(out.iterdir())  # no rows, no report


def test_largest_forward_replays_the_engines_batches():
    # 3 layers; "single" and "window" form one image group per start layer (sharing that layer's
    # forward), "knockout_last" a group of its own on 4 rows
    rows = {"image": 10, "knockout_last": 4}
    forwards = largest_forward(("single", "window", "knockout_last"), 3, rows, 8)
    assert forwards == [
        (1, 10, False),  # layer 0: the entering image group shares one forward
        (1, 4, False),
        (3, 10, False),  # layer 1: single and window from layer 0, plus the entering group
        (2, 4, False),
        (5, 10, True),  # layer 2 (the last): 4 started + 1 entering
        (3, 4, True),
    ]
    small = largest_forward(("single", "window", "knockout_last"), 3, rows, 4)
    assert small[-3:] == [(4, 10, True), (1, 10, True), (3, 4, True)]  # 6 image conditions split 4 + 2


def test_planned_activations_follow_the_largest_forward():
    vlm = tiny_vlm("llava", "sdpa")
    prepared = sample_for(vlm)
    text = vlm.config.get_text_config()
    L, d, seq = vlm.n_layers, text.hidden_size, prepared.seq_len
    rows = seq - int(prepared.image_positions.min())
    plan = plan_sample(vlm.adapter, vlm.config, torch.float32, prepared, variants=("single",), weights=0)
    # "single" alone: at the last layer every start's condition but the entering one's is distinct
    # (L - 1 + 1), its MLP on the scored rows; below it, at most L - 1 conditions on every row
    last = L * (rows * 4 * d + min(rows, ANSWER_TOKENS) * 3 * text.intermediate_size)
    below = (L - 1) * rows * (4 * d + 3 * text.intermediate_size)
    assert plan.memory["layer_activations"] == max(last, below) * 4


def test_pair_plan_by_hand():
    from interp.planner import plan_pair

    vlm = tiny_vlm("llava", "eager")
    base = sample_for(vlm)
    text = vlm.config.get_text_config()
    L, d, seq = vlm.n_layers, text.hidden_size, base.seq_len
    rows = seq - int(base.image_positions.min())
    kv_token = 2 * text.num_key_value_heads * (d // text.num_attention_heads) * 4
    plan = plan_pair(vlm.adapter, vlm.config, torch.float32, base, {0: 5, 2: 20}, batch=16, weights=0)
    assert plan.memory["clean_prefix"] == L * seq * (2 * d * 4 + kv_token)  # source inputs, base inputs + keys/values
    assert plan.memory["clean_forward"] == seq * (4 * d + 3 * text.intermediate_size + text.vocab_size) * 4
    assert plan.memory["restart_states"] == 16 * rows * d * 4  # one chunk of 16 conditions
    assert plan.memory["layer_activations"] == 16 * rows * (4 * d + 3 * text.intermediate_size) * 4
    assert plan.memory["scored_logits"] == (25 + 2) * text.vocab_size * 4
    # two captures, then layer 0's 5 conditions in one forward through L layers, layer 2's 20 in two through L - 2
    parts = plan.memory
    assert plan.peak_bytes == (
        sum(parts.values())
        - parts["clean_forward"]
        - parts["layer_activations"]
        + max(parts["clean_forward"], parts["layer_activations"])
    )
    assert plan.work["layer_applications"] == 2 * L + 1 * L + 2 * (L - 2)
    assert plan.work["layer_rows"] == 2 * L * seq + 5 * rows * L + 20 * rows * (L - 2)


def test_patch_and_evaluate_dry_runs_print_the_plan_and_run_nothing(capsys, tmp_path):
    from interp.cli import main

    out = tmp_path / "patch"
    assert main(["patch", "--model", "tiny:llava", "--out", str(out), "--dry-run", "--pairs", "3"]) == 0
    printed = capsys.readouterr().out
    assert "one pair:" in printed and "conditions" in printed
    assert not out.exists() or not any(out.iterdir())
    results = tmp_path / "eval.jsonl"
    assert (
        main(
            [
                "evaluate",
                "--model",
                "tiny:llava",
                "--task",
                "synthetic",
                "--limit",
                "2",
                "--dry-run",
                "--out",
                str(results),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "one batch:" in printed and "kv_cache" in printed
    assert not results.exists()


def test_pair_plan_counts_the_sweeps_conditions():
    from interp.analysis.patching import first_pair_plan, section_pairs
    from interp.data.synthetic import SyntheticVQA

    vlm = tiny_vlm("llava", "sdpa")
    pairs = section_pairs(SyntheticVQA("test", image_size=vlm.scene_size), 1, ("colour",), 0)
    plan = first_pair_plan(vlm, pairs, positions=("changed", "last"), layers=[0, 1], cell_layers=[1], cell_pairs=1)
    grid = vlm.prepare(pairs[0].base.image, pairs[0].base.question).grid
    cells = int((grid.positions >= 0).sum())
    assert plan.work["conditions"] == 2 * 2 + cells  # 2 groups x 2 layers, and every cell at layer 1


def test_attribution_plan_by_hand():
    """Attribution keeps one forward's activations for its backward: the graph grows with layers x
    tokens, not with the conditions; atp* adds a base pass per layer, ig one per step."""
    from interp.planner import plan_attribution

    vlm = tiny_vlm("llava", "eager")
    base = sample_for(vlm)
    text = vlm.config.get_text_config()
    L, d, seq, heads = vlm.n_layers, text.hidden_size, base.seq_len, text.num_attention_heads
    plan = plan_attribution(
        vlm.adapter, vlm.config, torch.float32, base, {0: 5, 2: 20}, attn_implementation="eager", weights=0
    )
    assert plan.memory["graph"] == L * seq * (4 * d + 3 * text.intermediate_size + 2 * d) * 4
    assert plan.memory["attention_scores"] == L * heads * seq * seq * 4
    assert plan.memory["logits_and_grad"] == 2 * seq * text.vocab_size * 4
    assert plan.peak_bytes == sum(plan.memory.values())
    assert (plan.work["forwards"], plan.work["backwards"]) == (2, 1)
    more = plan_attribution(vlm.adapter, vlm.config, torch.float32, base, {0: 500}, weights=0)
    assert (
        more.memory["graph"] == plan.memory["graph"] and more.memory["attention_scores"] == 0
    )  # sdpa  # one backward serves every condition
    star = plan_attribution(vlm.adapter, vlm.config, torch.float32, base, {0: 5}, method="atp*", weights=0)
    assert (star.work["forwards"], star.work["backwards"]) == (2 + L, 1 + L)
    ig = plan_attribution(vlm.adapter, vlm.config, torch.float32, base, {0: 5}, method="ig", steps=4, weights=0)
    assert (ig.work["forwards"], ig.work["backwards"]) == (5, 4)


def test_patch_dry_run_plans_the_attribution_and_its_validation(capsys, tmp_path):
    from interp.cli import main

    out = tmp_path / "atp"
    args = ["patch", "--model", "tiny:llava", "--out", str(out), "--dry-run", "--pairs", "3", "--method", "atp*"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "exact patching:" in printed and "attribution (atp*):" in printed and "graph" in printed
    assert main(args + ["--validate", "0"]) == 0
    printed = capsys.readouterr().out
    assert "exact patching:" not in printed and "backwards" in printed
    assert not out.exists() or not any(out.iterdir())
