"""The fast sweep's generation scoring and its row-level restart, against independent paths.

* generation-scored fast sweep (restart + KV cache + batched greedy decoding) == the naive
  sweep (one ``model.generate`` per condition through nnsight): identical predictions and
  scores, on LLaVA, Gemma3 (sliding-window layers shorter than the prompt, bidirectional
  image attention) and Qwen2-VL (M-RoPE);
* the teacher-forced pass's prompt rows equal the prompt's own clean pass (causality);
* row-level restart (only the rows a condition can change, the others' clean keys/values
  from a ``DynamicCache``) == the every-row restart, and does less layer-row work;
* ``first_changed_row`` by hand: query rows of a knockout, the first image token, lowered
  to the start of a bidirectional image block;
* layers shared by conditions with the same input (single/window/cumulative) run once.
"""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import Cache

from interp.analysis.clean import sample_pass
from interp.analysis.sweep import VARIANTS, masking_sweep, sweep_rows
from interp.engine import capture
from interp.engine.clean_kv import fill_kv
from interp.engine.restarts import RestartGroup, restart, restart_many
from interp.engine.row_suffix import first_changed_row
from interp.interventions import AttentionKnockout, Intervention, Plan, ScaleImageTokens

from ..conftest import square_items, tiny_vlm

KEYS = ["item", "variant", "layer"]


@pytest.mark.parametrize("model_type,attn", [("llava", "sdpa"), ("gemma3", "sdpa"), ("qwen2_vl", "sdpa")])
def test_generation_scored_fast_sweep_equals_naive(model_type, attn):
    vlm = tiny_vlm(model_type, attn)
    items = square_items(vlm, 2)
    kwargs = dict(variants=VARIANTS, window=2, scoring="generate", max_new_tokens=4, progress=False)
    vlm.counts.clear()
    fast = masking_sweep(vlm, items, mode="fast", **kwargs)
    fast_counts = dict(vlm.counts)
    naive = masking_sweep(vlm, items, mode="naive", **kwargs)
    assert fast.attrs["mode"] == "fast" and naive.attrs["mode"] == "naive"
    assert "generate" not in fast_counts and fast_counts["decode_forward"] <= 2 * 3  # one batch per sample
    merged = fast.merge(naive, on=KEYS, suffixes=("_fast", "_naive"))
    assert len(merged) == len(fast) == len(naive) == 2 * (1 + len(VARIANTS) * vlm.n_layers)
    assert (merged.prediction_fast == merged.prediction_naive).all()
    assert (merged.correct_fast == merged.correct_naive).all()
    assert (merged.logprob_fast - merged.logprob_naive).abs().max() < 1e-4
    # the edits change what the random model says, so equal predictions are not trivially equal
    assert merged.prediction_naive.nunique() > 2


def test_generation_sweep_decodes_in_batches_and_auto_picks_fast():
    vlm = tiny_vlm("llava", "sdpa")
    items = square_items(vlm, 1)
    kwargs = dict(variants=("single", "knockout_last"), window=2, scoring="generate", max_new_tokens=3, progress=False)
    whole = masking_sweep(vlm, items, **kwargs)
    assert whole.attrs["mode"] == "fast"
    split = masking_sweep(vlm, items, mode="fast", decode_batch=3, **kwargs)
    assert whole.prediction.tolist() == split.prediction.tolist()
    assert whole.correct.tolist() == split.correct.tolist()


@pytest.mark.parametrize("model_type", ["llava", "gemma3", "qwen2_vl"])
def test_teacher_forced_prompt_rows_equal_the_prompt_pass(model_type):
    """What the generation path takes from the teacher-forced pass (its prompt rows' keys and
    values) is what a clean pass of the prompt alone computes."""
    vlm = tiny_vlm(model_type, "sdpa")
    sp = sample_pass(vlm, square_items(vlm, 1)[0], restartable=True, attention_layers=None, residual_layers=None)
    prompt = capture(vlm, sp.prepared, torch.tensor([sp.prepared.seq_len - 1]), keep_kv=True)
    n = sp.prepared.seq_len
    for (k_tf, v_tf), (k, v) in zip(fill_kv(vlm, sp.clean), prompt.kv):
        assert k.shape[2] == n and k_tf.shape[2] > n
        assert torch.allclose(k_tf[:, :, :n], k, atol=1e-6) and torch.allclose(v_tf[:, :, :n], v, atol=1e-6)
    for (args_tf, _), (args, _) in zip(sp.clean.layer_inputs, prompt.layer_inputs):
        assert torch.allclose(args_tf[0][:, :n], args[0], atol=1e-6)


def _sweep(vlm, sp, rows):
    vlm.counts.clear()
    out = sweep_rows(
        vlm, sp, VARIANTS, list(range(vlm.n_layers)), window=2, scale=1e-9, scoring="teacher", fast=True, rows=rows
    )
    return {(r["variant"], r["layer"]): r for r in out}, dict(vlm.counts)


@pytest.mark.parametrize(
    "model_type,attn", [("llava", "sdpa"), ("llava", "eager"), ("gemma3", "sdpa"), ("qwen2_vl", "sdpa")]
)
def test_row_level_restart_equals_every_row(model_type, attn):
    vlm = tiny_vlm(model_type, attn)
    for item in square_items(vlm, 2):
        sp = sample_pass(vlm, item, restartable=True, attention_layers=None, residual_layers=None)
        rows, rows_counts = _sweep(vlm, sp, True)
        full, full_counts = _sweep(vlm, sp, False)
        assert rows.keys() == full.keys()
        for key in full:
            assert rows[key]["correct"] == full[key]["correct"], key
            assert abs(rows[key]["logprob"] - full[key]["logprob"]) < 1e-4, key
        # less work: knockouts recompute their query rows only; shared layer-l forwards
        assert rows_counts["layer_token_rows"] < 0.8 * full_counts["layer_token_rows"]
        cumulative0 = rows[("cumulative", 0)]["logprob"]
        assert abs(cumulative0 - rows[("baseline", -1)]["logprob"]) > 1e-3


def test_first_changed_row_by_hand():
    vlm = tiny_vlm("llava", "sdpa")
    sp = sample_pass(vlm, square_items(vlm, 1)[0], restartable=True, attention_layers=None, residual_layers=None)
    tf = sp.tf
    image, question = tf.prepared.image_positions, tf.prepared.question_positions

    def row(*items, start=1):
        return first_changed_row(vlm, sp.clean, start, [Plan(list(items)).bind(vlm, tf.prepared)])

    assert row(AttentionKnockout([tf.last_prompt_position], "image", [1, 2])) == tf.last_prompt_position
    assert row(AttentionKnockout("question", "image", [1])) == int(question.min())
    assert row(ScaleImageTokens([1, 2])) == int(image.min())
    # an edit below the restart layer is the clean pass's (a recorder would be read from it)
    assert row(ScaleImageTokens([0]), AttentionKnockout("question", "image", [2]), start=1) == int(question.min())
    # the first scored position bounds it: rows from there on are always recomputed
    assert row(AttentionKnockout([int(tf.positions.max())], "image", [1])) == int(tf.positions.min())
    middle = int(image[len(image) // 2])
    assert row(AttentionKnockout([middle], "text", [1])) == middle  # causal: rows before it never see it


def test_first_changed_row_respects_bidirectional_image_attention():
    """Gemma3's image tokens attend to each other both ways: a change at a middle image row
    reaches the image rows before it, so the restart starts at the first image token."""
    vlm = tiny_vlm("gemma3", "sdpa")
    sp = sample_pass(vlm, square_items(vlm, 1)[0], restartable=True, attention_layers=None, residual_layers=None)
    image = sp.tf.prepared.image_positions
    middle = int(image[len(image) // 2])
    bound = Plan(AttentionKnockout([middle], "text", [1])).bind(vlm, sp.tf.prepared)
    assert first_changed_row(vlm, sp.clean, 1, [bound]) == int(image.min())
    # ... and the row-level restart from there equals the every-row one
    a = restart(vlm, sp.clean, 1, [bound], first_row=int(image.min())).hidden
    b = restart(vlm, sp.clean, 1, [bound], first_row=0).hidden
    assert torch.allclose(a, b, atol=1e-5)


def test_shared_layer_forward_for_identical_inputs():
    vlm = tiny_vlm("llava", "sdpa")
    sp = sample_pass(vlm, square_items(vlm, 1)[0], restartable=True, attention_layers=None, residual_layers=None)
    n_layers, start = vlm.n_layers, 1
    variants = [
        Plan(ScaleImageTokens(layers, 1e-9)).bind(vlm, sp.tf.prepared)
        for layers in ([start], [start, start + 1], list(range(start, n_layers)))
    ]
    row = first_changed_row(vlm, sp.clean, start, variants)
    fill_kv(vlm, sp.clean)  # the clean keys/values, computed once per sample (not counted here)
    vlm.counts.clear()
    shared = restart(vlm, sp.clean, start, variants, first_row=row).hidden
    shared_forwards = vlm.counts["layer_forwards"]
    vlm.counts.clear()
    alone = restart(vlm, sp.clean, start, variants, first_row=row, share=False).hidden
    assert vlm.counts["layer_forwards"] == 3 * (n_layers - start)
    # layer `start`: one forward for the three; layer start+1: window == cumulative
    assert shared_forwards == vlm.counts["layer_forwards"] - 3
    assert torch.allclose(shared, alone, atol=1e-6)


def _mixed_groups(vlm, sp):
    """Restart groups with different start layers and first rows: image-token edits, a
    knockout of the last token's attention and one of the question's."""
    tf = sp.tf
    prepared = tf.prepared
    last = [tf.last_prompt_position]
    groups = []
    for start in range(vlm.n_layers):
        edits = [
            [ScaleImageTokens([start], 1e-9)],
            [ScaleImageTokens(list(range(start, vlm.n_layers)), 1e-9)],
            [AttentionKnockout(last, "image", [start])],
            [AttentionKnockout("question", "image", [start])],
        ]
        for items in edits:
            bound = Plan(*items).bind(vlm, prepared)
            groups.append(RestartGroup(start, [bound], first_changed_row(vlm, sp.clean, start, [bound])))
    return groups


@pytest.mark.parametrize("model_type", ["llava", "qwen2_vl"])
def test_layer_major_restart_equals_each_group_alone(model_type):
    """``restart_many`` (every group in one layer-major pass, batches across start layers) ==
    each group restarted alone, in the final hidden states and in every layer's prompt keys and
    values; it makes fewer layer calls for the same layer-row work."""
    vlm = tiny_vlm(model_type, "sdpa")
    sp = sample_pass(vlm, square_items(vlm, 1)[0], restartable=True, attention_layers=None, residual_layers=None)
    groups = _mixed_groups(vlm, sp)
    assert len({g.first_row for g in groups}) == 3 and len({g.start for g in groups}) == vlm.n_layers
    kv_rows = sp.tf.prompt_len
    fill_kv(vlm, sp.clean)
    layers = vlm.adapter.resolve(vlm.model, "layers")
    calls = []
    handle = layers[-1].register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        vlm.counts.clear()
        alone = [restart(vlm, sp.clean, g.start, g.variants, first_row=g.first_row, kv_rows=kv_rows) for g in groups]
        alone_calls, alone_rows = len(calls), vlm.counts["layer_token_rows"]
        calls.clear()
        vlm.counts.clear()
        together = restart_many(vlm, sp.clean, groups, batch=8, kv_rows=kv_rows)
    finally:
        handle.remove()
    assert alone_calls == len(groups) and len(calls) < len(groups) / 2
    assert vlm.counts["layer_token_rows"] <= alone_rows
    for a, b in zip(alone, together):
        assert torch.allclose(a.hidden, b.hidden, atol=1e-5)
        assert len(a.kv) == len(b.kv) == vlm.n_layers
        for (ka, va), (kb, vb) in zip(a.kv, b.kv):
            assert ka.shape == kb.shape and torch.allclose(ka, kb, atol=1e-5) and torch.allclose(va, vb, atol=1e-5)


def test_last_layer_output_projection_and_mlp_run_on_the_scored_rows_only():
    """Nothing reads the last layer's other rows: its o_proj and MLP see the scored rows only,
    and the scored hidden states equal the full layer's (an independent full-row run)."""
    vlm = tiny_vlm("llava", "sdpa")
    sp = sample_pass(vlm, square_items(vlm, 1)[0], restartable=True, attention_layers=None, residual_layers=None)
    last = vlm.n_layers - 1
    bound = Plan(ScaleImageTokens([last], 1e-9)).bind(vlm, sp.tf.prepared)
    row = first_changed_row(vlm, sp.clean, last, [bound])
    block = vlm.adapter.resolve(vlm.model, "layers")[last]
    seen = []  # the rows the MLP computed (a forward hook registered before the engine's own)
    handle = getattr(block, vlm.access.mlp_name).register_forward_hook(lambda m, args, out: seen.append(out.shape[1]))
    try:
        fast = restart(vlm, sp.clean, last, [bound], first_row=row).hidden
    finally:
        handle.remove()
    assert seen == [len(sp.clean.positions)] and len(sp.clean.positions) < sp.tf.prepared.seq_len - row
    # reference: the layer by hand on every row, from its captured clean input
    args, kwargs = sp.clean.layer_inputs[last]
    hidden = (args[0] if args else kwargs["hidden_states"]).clone()
    image = sp.tf.prepared.image_positions
    hidden[:, image] *= 1e-9
    kwargs = {k: (None if isinstance(v, Cache) else v) for k, v in kwargs.items() if k != "hidden_states"}
    out = block(hidden, *args[1:], **kwargs)
    out = out[0] if isinstance(out, tuple) else out
    assert torch.allclose(fast, out[:, sp.clean.positions], atol=1e-5)
    # an edit inside the last layer (at its MLP output) sees every row: the restriction is off
    seen.clear()
    handle = getattr(block, vlm.access.mlp_name).register_forward_hook(lambda m, args, out: seen.append(out.shape[1]))
    try:
        edited = restart(
            vlm, sp.clean, last, [bound + Plan(_HalveMlpOut(last)).bind(vlm, sp.tf.prepared)], first_row=row
        ).hidden
    finally:
        handle.remove()
    assert seen == [sp.tf.prepared.seq_len - row]
    assert not torch.allclose(edited, fast, atol=1e-4)


class _HalveMlpOut(Intervention):
    """Test edit: the MLP output of one layer, halved at every row."""

    def __init__(self, layer: int):
        self.layers = [layer]

    def sites(self):
        return [(self.layers[0], "mlp_out")]

    def edit_hidden(self, layer, site, hidden, ctx):
        return hidden * 0.5
