"""Activation patching against independent computations: plain PyTorch forward hooks that
record the source and replace in the base, the source's and base's own forwards, and the
captured-prefix fast path against the nnsight session path."""

from __future__ import annotations

import pytest
import torch

from interp.analysis.patching import as_pairs, patch_session, patching_effects, patching_sweep, run_patched
from interp.data.synthetic import SyntheticVQA, counterfactual_pairs
from interp.errors import HookNameError, InputError, InterpError, LayerIndexError
from interp.interventions import ImageCells, PatchActivations, RecordResidual, ScaleImageTokens

from ..conftest import TEST_IMAGE_SIZE, make_image, tiny_vlm

FAMILIES = ("llava", "qwen2_vl", "idefics3")
SITES = ("resid_pre", "q", "k", "v", "attn_out", "mlp_out", "resid_post")


def _pair(vlm, question_b: str = "What colour is the square?", question_s: str | None = None):
    """Two inputs that differ only in the image (or also in the question)."""
    size = TEST_IMAGE_SIZE
    base = vlm.prepare(make_image(*size, seed=1), question_b)
    source = vlm.prepare(make_image(*size, seed=2), question_s or question_b)
    return base, source


def _logits(vlm, prepared):
    with torch.no_grad():
        return vlm.model(**prepared.inputs).logits[:, -1]


# -- the plain-PyTorch reference ------------------------------------------------------------


def _module(vlm, layer, site):
    block = vlm.adapter.resolve(vlm.model, "layers")[layer]
    if site in ("resid_pre", "resid_post"):
        return block
    if site in ("q", "k", "v"):  # the projections' outputs (queries and keys before rotary embedding)
        attn = getattr(block, vlm.adapter.attn_name)
        return getattr(attn, getattr(vlm.adapter, f"{site}_name"))
    return getattr(block, vlm.adapter.attn_name if site == "attn_out" else vlm.adapter.mlp_name)


def _hidden_of(site, args, kwargs, output):
    if site == "resid_pre":
        return args[0] if args else kwargs["hidden_states"]
    return output[0] if isinstance(output, tuple) else output


def _reference_patch(vlm, base, source, layer, site, base_rows, source_rows):
    """Record the source's value at (layer, site) with a hook, then replace rows in the base."""
    module = _module(vlm, layer, site)
    recorded = {}

    def record_pre(mod, args, kwargs):
        recorded["value"] = _hidden_of(site, args, kwargs, None).detach().clone()

    def record_post(mod, args, kwargs, output):
        recorded["value"] = _hidden_of(site, args, kwargs, output).detach().clone()

    handle = (
        module.register_forward_pre_hook(record_pre, with_kwargs=True)
        if site == "resid_pre"
        else module.register_forward_hook(record_post, with_kwargs=True)
    )
    try:
        _logits(vlm, source)
    finally:
        handle.remove()
    value = recorded["value"]

    def replace(hidden):
        new = hidden.clone()
        new[:, base_rows] = value[:, source_rows]
        return new

    def patch_pre(mod, args, kwargs):
        if args:
            return (replace(args[0]),) + tuple(args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = replace(kwargs["hidden_states"])
        return args, kwargs

    def patch_post(mod, args, kwargs, output):
        if isinstance(output, tuple):
            return (replace(output[0]),) + tuple(output[1:])
        return replace(output)

    handle = (
        module.register_forward_pre_hook(patch_pre, with_kwargs=True)
        if site == "resid_pre"
        else module.register_forward_hook(patch_post, with_kwargs=True)
    )
    try:
        return _logits(vlm, base)
    finally:
        handle.remove()


@pytest.mark.parametrize("model_type", FAMILIES)
def test_patch_equals_a_forward_hook_reference_at_every_site(model_type):
    vlm = tiny_vlm(model_type)
    base, source = _pair(vlm)
    layer = vlm.n_layers // 2
    grid = base.grid
    cells = [(0, c) for c in range(grid.cols)] + [(grid.rows - 1, 0)]
    selectors = {"cells": ImageCells(cells), "question": "question", "last": "last"}
    conditions, references = [], []
    for site in SITES:
        for selector in selectors.values():
            if isinstance(selector, ImageCells):
                rows_b = rows_s = selector.positions(base)
            elif selector == "question":
                rows_b, rows_s = base.question_positions, source.question_positions
            else:
                rows_b, rows_s = torch.tensor([base.seq_len - 1]), torch.tensor([source.seq_len - 1])
            references.append(_reference_patch(vlm, base, source, layer, site, rows_b, rows_s))
            conditions.append([PatchActivations(layers=layer, site=site, positions=selector)])
    runs = patch_session(vlm, base, source, conditions).runs
    unpatched = _logits(vlm, base)
    for run, reference in zip(runs, references):
        assert (run.logits - reference).abs().max() < 1e-5
    # the references are not the base run: each patch changes the logits
    assert min(float((ref - unpatched).abs().max()) for ref in references) > 1e-6


def _reference_head_patch(vlm, base, source, layer, heads, base_rows, source_rows):
    """Per-head patching by hand: record the source's input to the attention's output
    projection, then write those heads' slices at the rows into the base's."""
    block = vlm.adapter.resolve(vlm.model, "layers")[layer]
    o_proj = getattr(getattr(block, vlm.adapter.attn_name), vlm.adapter.o_name)
    head_dim = vlm.access.head_dim
    recorded = {}
    handle = o_proj.register_forward_pre_hook(lambda mod, args: recorded.setdefault("z", args[0].detach().clone()))
    try:
        _logits(vlm, source)
    finally:
        handle.remove()

    def patch(mod, args):
        z = args[0].clone()
        for h in heads:
            cols = slice(h * head_dim, (h + 1) * head_dim)
            z[:, base_rows, cols] = recorded["z"][:, source_rows, cols]
        return (z,) + tuple(args[1:])

    handle = o_proj.register_forward_pre_hook(patch)
    try:
        return _logits(vlm, base)
    finally:
        handle.remove()


@pytest.mark.parametrize("model_type", FAMILIES)
def test_per_head_patch_equals_a_hand_written_hook_on_both_executors(model_type):
    """Patching heads at ``blocks.{l}.attn.hook_z`` = replacing their slice of the output
    projection's input; the captured-prefix fast path (each site) = the nnsight session."""
    vlm = tiny_vlm(model_type)
    base, source = _pair(vlm)
    layer = vlm.n_layers // 2
    n_heads = vlm.adapter.text_config(vlm.config).num_attention_heads
    cases = [([0], "last"), ([n_heads - 1], "question"), (list(range(n_heads)), "last")]
    for heads, selector in cases:
        rows_b, rows_s = (
            (base.question_positions, source.question_positions)
            if selector == "question"
            else (torch.tensor([base.seq_len - 1]), torch.tensor([source.seq_len - 1]))
        )
        reference = _reference_head_patch(vlm, base, source, layer, heads, rows_b, rows_s)
        run = run_patched(
            vlm, base, source, PatchActivations(f"blocks.{layer}.attn.hook_z", heads=heads, positions=selector)
        )
        assert (run.logits - reference).abs().max() < 1e-5
        assert (reference - _logits(vlm, base)).abs().max() > 1e-6  # the patch changes something
    # all heads at the last position = the attention output there (up to o_proj's bias, patched alike)
    whole = run_patched(vlm, base, source, PatchActivations(f"blocks.{layer}.hook_attn_out", positions="last"))
    every = run_patched(vlm, base, source, PatchActivations(f"blocks.{layer}.attn.hook_z", positions="last"))
    assert (whole.logits - every.logits).abs().max() < 1e-5
    from interp.analysis.patching import _fast_pair

    conditions = {
        (site, layer, "g", -1, -1, head): selector
        for site in SITES + ("z",)
        for head in ([0, n_heads - 1] if site == "z" else [-1])
        for selector in ("last", "question")
    }
    conditions = {k[:2] + (selector,) + k[3:]: selector for k in conditions for selector in ("last", "question")}
    clean, corrupt, fast = _fast_pair(vlm, base, source, conditions, batch=4)
    runs = patch_session(
        vlm,
        base,
        source,
        [
            [PatchActivations(layers=k[1], site=k[0], positions=sel, heads=None if k[5] < 0 else [k[5]])]
            for k, sel in conditions.items()
        ],
    ).runs
    for key, run in zip(conditions, runs):
        assert (fast[key] - run.logits[0].float()).abs().max() < 1e-5, key


def test_patch_under_remote_local_equals_the_reference():
    vlm = tiny_vlm("llava")
    base, source = _pair(vlm)
    image = base.image_positions
    for site in ("resid_pre", "mlp_out"):
        run = run_patched(vlm, base, source, PatchActivations(layers=1, site=site, positions="image"), remote="local")
        reference = _reference_patch(vlm, base, source, 1, site, image, source.image_positions)
        assert (run.logits - reference).abs().max() < 1e-5
    run = run_patched(
        vlm, base, source, PatchActivations("blocks.1.attn.hook_z", heads=[1], positions="image"), remote="local"
    )
    reference = _reference_head_patch(vlm, base, source, 1, [1], image, source.image_positions)
    assert (run.logits - reference).abs().max() < 1e-5


@pytest.mark.parametrize("model_type", FAMILIES)
def test_patching_all_image_tokens_at_layer_0_reproduces_the_source(model_type):
    vlm = tiny_vlm(model_type)
    base, source = _pair(vlm)
    source_logits, base_logits = _logits(vlm, source), _logits(vlm, base)
    assert (source_logits - base_logits).abs().max() > 1e-4  # the images matter
    patched = run_patched(vlm, base, source, PatchActivations("blocks.0.hook_resid_pre", positions="image"))
    assert (patched.logits - source_logits).abs().max() < 1e-5
    nothing = run_patched(vlm, base, source)
    assert (nothing.logits - base_logits).abs().max() < 1e-5
    # the last position's output of the last layer carries the whole prediction, even across questions
    other_base, other_source = _pair(vlm, "What is it?", "Which colour is the big square here?")
    last = run_patched(
        vlm, other_base, other_source, PatchActivations(f"blocks.{vlm.n_layers - 1}.hook_resid_post", positions="last")
    )
    assert (last.logits - _logits(vlm, other_source)).abs().max() < 1e-5


def test_patch_composes_with_other_interventions_in_order():
    vlm = tiny_vlm("llava")
    base, source = _pair(vlm)
    # patching every image token at layer 1, then scaling them at the same site: the scale sees the patch
    run = run_patched(
        vlm,
        base,
        source,
        PatchActivations(layers=1, positions="image"),
        ScaleImageTokens(1, 0.5),
        RecordResidual("blocks.1.hook_resid_post"),
    )
    assert run.names() == ["blocks.1.hook_resid_post"]  # the base run's own recordings, not the source's

    def hook(mod, args, kwargs):
        hidden = (args[0] if args else kwargs["hidden_states"]).clone()
        hidden[:, base.image_positions] = recorded[:, source.image_positions] * 0.5
        if args:
            return (hidden,) + tuple(args[1:]), kwargs
        return args, dict(kwargs, hidden_states=hidden)

    block = vlm.adapter.resolve(vlm.model, "layers")[1]
    recorded = None

    def grab(mod, args, kwargs):
        nonlocal recorded
        recorded = (args[0] if args else kwargs["hidden_states"]).clone()

    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    _logits(vlm, source)
    handle.remove()
    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        reference = _logits(vlm, base)
    finally:
        handle.remove()
    assert (run.logits - reference).abs().max() < 1e-5
    assert run.record("blocks.1.hook_resid_post", 1).shape[1] == base.seq_len


def test_fast_sweep_equals_the_session_sweep_and_the_exact_limits():
    vlm = tiny_vlm("llava")
    pairs = counterfactual_pairs(SyntheticVQA("test", seed=0), 3)
    fast = patching_sweep(vlm, pairs, cell_layers=[1], mode="fast", progress=False)
    naive = patching_sweep(vlm, pairs, cell_layers=[1], mode="naive", progress=False)
    keys = ["pair", "site", "head", "layer", "group", "row", "col"]
    merged = fast.merge(naive, on=keys, suffixes=("_fast", "_naive"))
    assert len(merged) == len(fast) == len(naive) > 0
    assert (merged.logit_diff_fast - merged.logit_diff_naive).abs().max() < 1e-5
    # every site, and single heads, on the fast path = the sessions
    kwargs = dict(sites=SITES + ("z",), heads=[0, 2], positions=["changed", "last"], layers=[0, 2], progress=False)
    fast_all = patching_sweep(vlm, pairs[:2], mode="fast", **kwargs)
    naive_all = patching_sweep(vlm, pairs[:2], mode="naive", **kwargs)
    merged = fast_all.merge(naive_all, on=keys, suffixes=("_fast", "_naive"))
    assert len(merged) == len(fast_all) == len(naive_all) == 2 * 2 * 2 * (len(SITES) + 2)
    assert (merged.logit_diff_fast - merged.logit_diff_naive).abs().max() < 1e-5
    assert set(fast_all[fast_all.site == "z"]["head"]) == {0, 2} and set(fast_all[fast_all.site != "z"]["head"]) == {-1}
    # all image tokens at layer 0 = the source run: effect exactly 1 where it is defined
    image = patching_sweep(vlm, pairs[:2], positions=["image"], layers=[0], mode="fast", progress=False)
    assert ((image.logit_diff - image.clean_logit_diff).abs() < 1e-5).all()
    assert ((image.effect - 1).abs() < 1e-3).all()
    # the last token at the last layer's input plus ... nothing else: question tokens at layer 0 are identical
    question = fast[(fast.group == "question") & (fast.layer == 0)]
    assert ((question.logit_diff - question.corrupt_logit_diff).abs() < 1e-6).all()
    effects = patching_effects(fast, n_boot=200)
    assert set(effects.metric) == {"effect", "answer_logit_change"}
    control = effects[effects.change == "distractor"]
    assert (control.metric == "answer_logit_change").all()


def test_a_resumed_sweep_runs_only_the_missing_pairs_and_equals_one_run(tmp_path):
    import json

    vlm = tiny_vlm("llava")
    pairs = counterfactual_pairs(SyntheticVQA("test", seed=0), 3)
    path = tmp_path / "partial.jsonl"
    kwargs = dict(positions=["changed", "last"], layers=[0, 2], progress=False)
    first = patching_sweep(vlm, pairs[:2], resume=path, **kwargs)
    assert set(first.pair) == {p.id for p in pairs[:2]}
    # a kill in the middle of the second pair's record: its line is cut short
    data = path.read_bytes()
    second = data.index(b"\n") + 1
    path.write_bytes(data[: second + (len(data) - second) // 2])
    vlm.counts.clear()
    again = patching_sweep(vlm, pairs, resume=path, **kwargs)
    assert vlm.counts["clean_forward"] == 2 * 2  # the torn pair and the new one recomputed (base and source each)
    whole = patching_sweep(vlm, pairs, **kwargs)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["key"] for r in records] == [p.id for p in pairs]  # the torn record is gone, each pair once
    assert sum(len(r["rows"]) for r in records) == len(whole) == len(again)
    assert again.attrs["mode"] == whole.attrs["mode"] == "fast"
    assert again.pair.tolist() == whole.pair.tolist()  # the uninterrupted order
    assert (again.logit_diff - whole.logit_diff).abs().max() < 1e-5
    vlm.counts.clear()
    done = patching_sweep(vlm, pairs, resume=path, **kwargs)  # everything done: nothing runs, labels stay
    assert not vlm.counts.get("clean_forward") and done.attrs["mode"] == "fast"
    assert done.equals(again)


def test_sweep_on_user_pairs_without_answers_uses_the_models_top_tokens():
    vlm = tiny_vlm("llava")
    size = (48, 64)
    pairs = [((make_image(*size, seed=1), "What is it?"), (make_image(*size, seed=2), "What is it?"))]
    frame = patching_sweep(vlm, pairs, positions=["image", "last"], layers=[0, 1], progress=False)
    assert set(frame.group) == {"image", "last"}
    assert frame.clean_correct.all() and frame.corrupt_correct.all()  # answers are the top tokens by definition


# -- bad input ------------------------------------------------------------------------------


def test_bad_inputs_each_give_one_clear_line():
    vlm = tiny_vlm("llava")
    base, source = _pair(vlm)
    with pytest.raises(InterpError, match="patchable sites"):
        run_patched(vlm, base, source, PatchActivations("blocks.0.attn.hook_pattern"))
    with pytest.raises(InterpError, match="patchable sites"):  # a real hook point, not a patchable one
        PatchActivations("blocks.0.attn.hook_result").bind(vlm.n_layers, base)
    with pytest.raises(InterpError, match="hook_z .site 'z'. only"):
        PatchActivations(layers=0, site="mlp_out", heads=[0]).bind(vlm.n_layers, base)
    with pytest.raises(InterpError, match="heads must be"):
        PatchActivations(layers=0, site="z", heads=[])
    with pytest.raises(InterpError, match="not one of the model's heads"):
        patching_sweep(vlm, [((make_image(), "q"), (make_image(seed=3), "q"))], sites=["z"], heads=[99], progress=False)
    with pytest.raises(HookNameError, match="unknown hook name"):
        PatchActivations("blocks.0.hook_nothing").bind(vlm.n_layers, base)
    with pytest.raises(LayerIndexError, match="out of range"):
        run_patched(vlm, base, source, PatchActivations(layers=vlm.n_layers))
    with pytest.raises(InterpError, match="cannot patch site"):
        PatchActivations(layers=0, site="attn_pattern")
    long_base, long_source = _pair(vlm, "What is it?", "What colour is the big square?")
    with pytest.raises(InputError, match="positions must align"):
        run_patched(vlm, long_base, long_source, PatchActivations(layers=0, positions=[1, 2]))
    with pytest.raises(InputError, match="question has"):
        run_patched(vlm, long_base, long_source, PatchActivations(layers=0, positions="question"))
    with pytest.raises(InputError, match="no pairs"):
        patching_sweep(vlm, [], progress=False)
    with pytest.raises(InputError, match="no pairs"):
        as_pairs([])
    with pytest.raises(InterpError, match="fast patching sweep does not apply"):
        patching_sweep(
            vlm, [((make_image(), "q"), (make_image(seed=3), "q"))], sites=["mlp_out"], mode="fast", remote="local"
        )
    with pytest.raises(InterpError, match="no source activation"):
        vlm.run(base, PatchActivations(layers=0))


def test_image_token_count_mismatch_is_one_clear_line():
    vlm = tiny_vlm("qwen2_vl")  # its image-token count follows the image size
    base = vlm.prepare(make_image(48, 64, seed=1), "What is it?")
    source = vlm.prepare(make_image(64, 64, seed=2), "What is it?")
    assert base.n_image_tokens != source.n_image_tokens
    with pytest.raises(InputError, match="image tokens but the base has"):
        run_patched(vlm, base, source, PatchActivations(layers=0, positions="image"))
    with pytest.raises(InputError, match="patch grid is"):
        run_patched(vlm, base, source, PatchActivations(layers=0, positions=ImageCells([(0, 0)])))
    # the last token always aligns
    run = run_patched(
        vlm, base, source, PatchActivations(f"blocks.{vlm.n_layers - 1}.hook_resid_post", positions="last")
    )
    assert (run.logits - _logits(vlm, source)).abs().max() < 1e-5


# -- the organism ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def organism():
    import interp

    return interp.load("organism")


def test_organism_changed_cells_carry_the_change_at_layer_0_and_the_control_stays_put(organism):
    pairs = counterfactual_pairs(SyntheticVQA("test", seed=0), 3)  # colour, shape, distractor
    frame = patching_sweep(organism, pairs, positions=["changed", "image"], layers=[0], progress=False)
    first = frame[frame.layer == 0]
    moved = first[(first.change != "distractor") & (first.group == "changed")]
    assert len(moved) == 2 and (moved.clean_logit_diff - moved.corrupt_logit_diff).abs().min() > 2.0
    assert (moved.effect - 1).abs().max() < 0.15  # the changed cells hold (nearly) all of the difference
    # every image token at layer 0 is the source run exactly
    image = first[first.group == "image"]
    assert ((image.logit_diff - image.clean_logit_diff).abs() < 1e-4).all()
    control = frame[frame.change == "distractor"]
    assert len(control) == 2 and control.same_first_token.all()
    # the control's answer logit moves far less than the answer-changing pairs' logit differences
    assert control.answer_logit_change.abs().max() < 0.1 * moved.clean_logit_diff.abs().min()
