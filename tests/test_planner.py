"""The run planner (``interp reproduce --dry-run``) against hand-worked arithmetic."""

from __future__ import annotations

import torch

from interp.planner import ANSWER_TOKENS, plan_sample, weight_bytes

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
    assert eager.memory["attention_scores"] == 8 * text.num_attention_heads * rows * seq * 4
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
