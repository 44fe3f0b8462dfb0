"""Every intervention against an independent computation, on tiny configs of every family.

References are plain HF forwards: ``output_attentions=True`` under eager attention,
and ``register_forward_pre_hook`` implementations written here, independently of
the toolkit's in-trace code.
"""

from __future__ import annotations

import pytest
import torch

import interp
from interp import (
    AttentionKnockout,
    MeanAblateImageTokens,
    NoiseAblateImageTokens,
    RecordAttention,
    RecordResidual,
    ScaleImageTokens,
)
from interp.models.tiny import tiny_model_types

from ..conftest import sample_for, tiny_vlm

FAMILIES = tiny_model_types()


def _layers(vlm):
    return vlm.adapter.resolve(vlm.model, "layers")


def _forward(vlm, inputs, **kwargs):
    with torch.no_grad():
        return vlm.model(**inputs, **kwargs)


def _with_pre_hooks(vlm, layers, hook, module_name=None):
    handles = []
    for layer in layers:
        module = _layers(vlm)[layer]
        if module_name:
            module = getattr(module, module_name)
        handles.append(module.register_forward_pre_hook(hook(layer), with_kwargs=True))
    return handles


def _hidden_editor(edit):
    """A decoder-layer pre-hook factory that edits the first input (hidden states)."""

    def factory(layer):
        def hook(module, args, kwargs):
            if args:
                return (edit(layer, args[0]),) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = edit(layer, kwargs["hidden_states"])
            return args, kwargs

        return hook

    return factory


def _reference_logits(vlm, sample, layers, edit):
    handles = _with_pre_hooks(vlm, layers, _hidden_editor(edit))
    try:
        return _forward(vlm, sample.inputs).logits[:, -1]
    finally:
        for handle in handles:
            handle.remove()


# -- attention recording ----------------------------------------------------------


@pytest.mark.parametrize("model_type", FAMILIES)
def test_record_attention_equals_hf_eager_output_attentions(model_type):
    vlm = tiny_vlm(model_type, "eager")
    sample = sample_for(vlm)
    reference = _forward(vlm, sample.inputs, output_attentions=True).attentions
    assert len(reference) == vlm.n_layers
    result = vlm.run(
        sample,
        RecordAttention("all", query="all", heads="all", keys="all", name="full"),
        RecordAttention("all"),
        RecordResidual([f"blocks.{layer}.attn.hook_pattern" for layer in range(vlm.n_layers)]),
    )
    image = sample.image_positions
    for layer in range(vlm.n_layers):
        ref = reference[layer]
        assert (result.record("full", layer) - ref).abs().max() < 1e-6
        assert (result.record(f"blocks.{layer}.attn.hook_pattern", layer) - ref).abs().max() < 1e-6
        last_to_image = ref[:, :, -1][..., image].mean(dim=1)
        assert (result.record("attention", layer)[:, -1] - last_to_image).abs().max() < 1e-6


@pytest.mark.parametrize("model_type", FAMILIES)
def test_record_attention_under_sdpa_equals_eager(model_type):
    eager, sdpa = tiny_vlm(model_type, "eager"), tiny_vlm(model_type, "sdpa")
    assert sdpa.attn_implementation == "sdpa"
    sample = sample_for(eager)
    reference = _forward(eager, sample.inputs, output_attentions=True).attentions
    result = sdpa.run(sample, RecordAttention("all", query="all", heads="all", keys="all"))
    for layer in range(sdpa.n_layers):
        assert (result.record("attention", layer) - reference[layer]).abs().max() < 1e-5


def test_attention_grid_places_values_on_the_patch_grid():
    vlm = tiny_vlm("llava")
    sample = sample_for(vlm)
    result = vlm.run(sample, RecordAttention([1]))
    grid = result.attention_grid(1)
    assert grid.shape == sample.grid.shape
    values = result.record("attention", 1)[0, -1]
    flat = grid.reshape(-1)
    index_of = {int(p): i for i, p in enumerate(sample.image_positions.tolist())}
    for cell, position in enumerate(sample.grid.positions.reshape(-1).tolist()):
        assert flat[cell] == values[index_of[position]]


# -- masking -----------------------------------------------------------------------


@pytest.mark.parametrize("model_type", FAMILIES)
def test_scale_image_tokens_equals_a_forward_pre_hook(model_type):
    vlm = tiny_vlm(model_type)
    sample = sample_for(vlm)
    image = sample.image_positions
    layers = [1, vlm.n_layers - 1]
    subset = torch.arange(0, sample.n_image_tokens, 2)

    def scale_all(layer, hidden):
        hidden = hidden.clone()
        hidden[:, image] = hidden[:, image] * 1e-9
        return hidden

    def zero_subset(layer, hidden):
        hidden = hidden.clone()
        hidden[:, image[subset]] = 0.0
        return hidden

    clean = _forward(vlm, sample.inputs).logits[:, -1]
    ours = vlm.run(sample, ScaleImageTokens(layers, scale=1e-9)).logits
    reference = _reference_logits(vlm, sample, layers, scale_all)
    assert (ours - reference).abs().max() < 1e-6
    assert (ours - clean).abs().max() > 1e-4, "masking must change the output"

    ours_subset = vlm.run(sample, ScaleImageTokens(layers, scale=0.0, tokens=subset)).logits
    assert (ours_subset - _reference_logits(vlm, sample, layers, zero_subset)).abs().max() < 1e-6


def test_mean_and_noise_ablation_equal_forward_pre_hooks():
    vlm = tiny_vlm("llava")
    sample = sample_for(vlm)
    image = sample.image_positions

    def mean_ablate(layer, hidden):
        hidden = hidden.clone()
        hidden[:, image] = hidden[:, image].mean(dim=1, keepdim=True)
        return hidden

    ours = vlm.run(sample, MeanAblateImageTokens([2])).logits
    assert (ours - _reference_logits(vlm, sample, [2], mean_ablate)).abs().max() < 1e-6

    def add_noise(layer, hidden):
        hidden = hidden.clone()
        values = hidden[:, image]
        generator = torch.Generator().manual_seed(7 + 1000003 * layer)
        noise = torch.randn(values.shape, generator=generator)
        hidden[:, image] = values + noise * 0.5
        return hidden

    ours = vlm.run(sample, NoiseAblateImageTokens([1, 3], std=0.5, seed=7)).logits
    assert (ours - _reference_logits(vlm, sample, [1, 3], add_noise)).abs().max() < 1e-6


def test_dynamic_selection_from_attention_recorded_in_the_same_pass():
    """Record layer 0, then scale the 4 most-attended image tokens at layer 2: one pass
    equals two passes (record, then mask with the indices computed in between)."""
    vlm = tiny_vlm("llava")
    sample = sample_for(vlm)

    def top4(ctx):
        return ctx.records[("attention", 0, 0)][0, -1].topk(4).indices

    one_pass = vlm.run(sample, RecordAttention([0]), ScaleImageTokens([2], scale=0.0, tokens=top4))
    first = vlm.run(sample, RecordAttention([0]))
    indices = first.record("attention", 0)[0, -1].topk(4).indices
    two_pass = vlm.run(sample, ScaleImageTokens([2], scale=0.0, tokens=indices))
    assert torch.equal(one_pass.logits, two_pass.logits)
    assert (one_pass.logits - first.logits).abs().max() > 1e-5


def test_interventions_at_one_site_apply_in_the_order_given():
    vlm = tiny_vlm("llava")
    sample = sample_for(vlm)
    name = "blocks.2.hook_resid_pre"
    before = vlm.run(sample, RecordResidual(name), ScaleImageTokens([2], scale=0.0)).record(name, 2)
    after = vlm.run(sample, ScaleImageTokens([2], scale=0.0), RecordResidual(name)).record(name, 2)
    assert before[:, sample.image_positions].abs().min() > 0
    assert after[:, sample.image_positions].abs().max() == 0
    text = torch.ones(sample.seq_len, dtype=torch.bool)
    text[sample.image_positions] = False
    assert torch.equal(before[:, text], after[:, text])


# -- attention knockout ---------------------------------------------------------------


def _additive(mask, q_len, k_len, dtype):
    """Independent conversion of whatever mask HF passed into an additive float mask."""
    if mask is None:
        causal = torch.ones(q_len, k_len, dtype=torch.bool).tril(diagonal=k_len - q_len)
        return torch.zeros(1, 1, q_len, k_len, dtype=dtype).masked_fill(~causal, torch.finfo(dtype).min)
    mask = mask[..., :k_len]
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    return mask.clone()


@pytest.mark.parametrize("model_type", FAMILIES)
def test_attention_knockout_equals_an_edited_mask_pre_hook(model_type):
    vlm = tiny_vlm(model_type)
    sample = sample_for(vlm)
    window = [1, 2]
    rows, cols = sample.question_positions, sample.image_positions
    n = sample.seq_len

    def factory(layer):
        def hook(module, args, kwargs):
            kwargs = dict(kwargs)
            mask = _additive(kwargs.get("attention_mask"), n, n, torch.float32)
            mask = mask.expand(mask.shape[0], mask.shape[1], n, n).clone()
            mask[:, :, rows[:, None], cols[None, :]] = torch.finfo(torch.float32).min
            kwargs["attention_mask"] = mask
            return args, kwargs

        return hook

    handles = _with_pre_hooks(vlm, window, factory, module_name=vlm.adapter.attn_name)
    try:
        reference = _forward(vlm, sample.inputs).logits[:, -1]
    finally:
        for handle in handles:
            handle.remove()
    result = vlm.run(sample, AttentionKnockout("question", "image", window), RecordAttention(window, query="question"))
    assert (result.logits - reference).abs().max() < 1e-6
    # the blocked edges carry no attention
    assert result.record("attention", 1).abs().max() == 0
    clean = _forward(vlm, sample.inputs).logits[:, -1]
    assert (result.logits - clean).abs().max() > 1e-5


def test_attention_knockout_equals_explicit_4d_mask_forward():
    """Last token -> image blocked in every layer == a forward with that 4D mask."""
    vlm = tiny_vlm("llava")
    sample = sample_for(vlm)
    n = sample.seq_len
    keep = torch.ones(n, n, dtype=torch.bool).tril()
    keep[-1, sample.image_positions] = False
    mask = torch.zeros(1, 1, n, n).masked_fill(~keep, torch.finfo(torch.float32).min)
    inputs = dict(sample.inputs)
    inputs["attention_mask"] = mask
    reference = _forward(vlm, inputs).logits[:, -1]
    ours = vlm.run(sample, AttentionKnockout("last", "image", "all")).logits
    assert (ours - reference).abs().max() < 1e-6


# -- generation ------------------------------------------------------------------------


def test_generate_masks_the_prefill_only():
    vlm = tiny_vlm("llava")
    sample = sample_for(vlm)
    image = sample.image_positions

    def factory(layer):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[1] == sample.seq_len:  # the prefill forward
                hidden = hidden.clone()
                hidden[:, image] = 0.0
            if args:
                return (hidden,) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = hidden
            return args, kwargs

        return hook

    handles = _with_pre_hooks(vlm, [1], factory)
    try:
        with torch.no_grad():
            reference = vlm.model.generate(**sample.inputs, max_new_tokens=5, do_sample=False)
    finally:
        for handle in handles:
            handle.remove()
    ours = vlm.run(sample, ScaleImageTokens([1], scale=0.0), generate=True, max_new_tokens=5)
    assert torch.equal(ours.sequences, reference[:, sample.seq_len :])
    assert ours.text == vlm.decode(reference[:, sample.seq_len :])


def test_every_step_recording_matches_fresh_forwards():
    vlm = tiny_vlm("llava")
    sample = sample_for(vlm)
    result = vlm.run(sample, RecordAttention([0, 2], every_step=True), generate=True, max_new_tokens=4)
    steps = result.sequences.shape[1]
    assert steps >= 1
    assert sorted({key[2] for key in result.records}) == list(range(steps))
    ids = torch.cat([sample.input_ids, result.sequences], dim=1)
    for step in range(steps):
        inputs = dict(sample.inputs)
        inputs["input_ids"] = ids[:, : sample.seq_len + step]
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        attentions = _forward(vlm, inputs, output_attentions=True).attentions
        for layer in (0, 2):
            expected = attentions[layer][:, :, -1][..., sample.image_positions].mean(dim=1)
            assert (result.record("attention", layer, step)[:, -1] - expected).abs().max() < 1e-5


# -- remote (nnsight's local simulation of NDIF) ----------------------------------------


@pytest.mark.parametrize("model_type", FAMILIES)
def test_remote_local_gives_the_same_numbers(model_type):
    vlm = tiny_vlm(model_type)
    sample = sample_for(vlm)
    plan = interp.Plan(
        RecordAttention("all"),
        AttentionKnockout("last", "image", [0]),
        ScaleImageTokens([1], scale=1e-9),
        MeanAblateImageTokens([2], tokens=[0, 1]),
        NoiseAblateImageTokens([2], std=0.1, tokens=[2, 3]),
        RecordResidual(["blocks.3.hook_resid_post", "ln_final.hook_normalized"]),
    )
    local = vlm.run(sample, plan)
    remote = vlm.run(sample, plan, remote="local")
    assert set(local.records) == set(remote.records)
    for key in local.records:
        assert torch.equal(local.records[key], remote.records[key]), key
    assert torch.equal(local.logits, remote.logits)


def test_remote_local_generation():
    vlm = tiny_vlm("llava")
    sample = sample_for(vlm)
    local = vlm.run(sample, ScaleImageTokens([1]), generate=True, max_new_tokens=3)
    remote = vlm.run(sample, ScaleImageTokens([1]), generate=True, max_new_tokens=3, remote="local")
    assert torch.equal(local.sequences, remote.sequences)


# -- reading hooks in a user's own trace ----------------------------------------------


def test_read_and_write_hooks_inside_a_user_trace():
    vlm = tiny_vlm("llava")
    sample = sample_for(vlm)
    with torch.no_grad(), vlm.trace(sample):
        pattern = vlm.read("blocks.1.attn.hook_pattern").save()
        resid = vlm.read("blocks.2.hook_resid_pre")
        vlm.write("blocks.2.hook_resid_pre", resid * 0.5)
        attn_out = vlm.read("blocks.2.hook_attn_out").save()
        mlp_out = vlm.read("blocks.2.hook_mlp_out").save()
        post = vlm.read("blocks.2.hook_resid_post").save()
        final = vlm.read("ln_final.hook_normalized").save()
    reference = _forward(vlm, sample.inputs, output_attentions=True)
    assert (pattern - reference.attentions[1]).abs().max() < 1e-6
    assert final.shape == (1, sample.seq_len, vlm.adapter.text_config(vlm.config).hidden_size)
    # LLaVA's Llama layers: resid_post = resid_pre + attn_out + mlp_out
    halved = _forward(vlm, sample.inputs, output_hidden_states=True).hidden_states[2] * 0.5
    assert (post - (halved + attn_out + mlp_out)).abs().max() < 1e-5
