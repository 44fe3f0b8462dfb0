"""Attribution patching against independent computations: plain-PyTorch autograd with forward hooks
(no nnsight), exact activation patching where the first-order estimate is exact, the knockout's
recorded change of each head's output, and hand-worked agreement scores."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from interp.analysis.attribution import agreement, attribution_sweep
from interp.analysis.edge_attribution import _knocked_out_change, _query_positions, edge_attribution, knockout_effects
from interp.analysis.patching import _first_token, as_pairs, patching_sweep
from interp.data.synthetic import SyntheticVQA, counterfactual_pairs
from interp.errors import InputError, InterpError
from interp.interventions import AttentionKnockout, RecordResidual

from ..conftest import TEST_IMAGE_SIZE, make_image, tiny_vlm

FAMILIES = ("llava", "qwen2_vl", "idefics3")


def _pairs(n: int = 2):
    return counterfactual_pairs(SyntheticVQA("test", seed=0), n, changes=("colour", "shape"))


# -- the plain-PyTorch reference -------------------------------------------------------------


def _site_module(vlm, layer: int, site: str):
    block = vlm.adapter.resolve(vlm.model, "layers")[layer]
    attn = getattr(block, vlm.adapter.attn_name)
    return {
        "resid_pre": block,
        "resid_post": block,
        "attn_out": attn,
        "mlp_out": getattr(block, vlm.adapter.mlp_name),
        "z": getattr(attn, vlm.access.o_name),
    }[site]


def _hooked_values(vlm, prepared, points, *, grad: bool, dropped: int | None = None):
    """Logits (last position) and the tensor at each ``(layer, site)``, from plain forward hooks;
    with ``grad`` the LM input is a leaf that requires grad (parameters stay frozen); ``dropped``:
    that layer's attention and MLP outputs pass on detached (GradDrop by hand)."""
    values, handles = {}, []
    blocks = vlm.adapter.resolve(vlm.model, "layers")

    def leaf_pre(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        leaf = hidden.detach().requires_grad_(grad)
        values["leaf"] = leaf
        if args:
            return (leaf,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": leaf}

    handles.append(blocks[0].register_forward_pre_hook(leaf_pre, with_kwargs=True))
    for layer, site in points:
        module = _site_module(vlm, layer, site)
        if site in ("resid_pre", "z"):

            def pre(module, args, kwargs, key=(layer, site)):
                values[key] = (
                    values["leaf"] if key == (0, "resid_pre") else (args[0] if args else kwargs["hidden_states"])
                )

            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        else:

            def post(module, args, output, key=(layer, site)):
                values[key] = output[0] if isinstance(output, tuple) else output

            handles.append(module.register_forward_hook(post))
    if dropped is not None:
        block = blocks[dropped]
        for module in (getattr(block, vlm.adapter.attn_name), getattr(block, vlm.adapter.mlp_name)):

            def detach(module, args, output):
                if isinstance(output, tuple):
                    return (output[0].detach(),) + tuple(output[1:])
                return output.detach()

            handles.append(module.register_forward_hook(detach))
    flags = [(p, p.requires_grad) for p in vlm.model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.set_grad_enabled(grad):
            logits = vlm.model(**prepared.inputs).logits[:, -1]
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
    return logits, values


def _reference(vlm, pair, points, groups, dropped: int | None = None, metric=None):
    """Per (layer, site, group): sum over the group's positions of (source - base) . dLD/d(base)
    (``dropped``: with that layer's gradient stopped; a site it cuts off has gradient 0)."""
    from interp.interventions.patch import aligned_positions

    base = vlm.prepare(pair.base.image, pair.base.question)
    source = vlm.prepare(pair.source.image, pair.source.question)
    a_s = _first_token(vlm, source, pair.source.answer)
    a_b = _first_token(vlm, base, pair.base.answer)
    _, src = _hooked_values(vlm, source, points, grad=False)
    logits, got = _hooked_values(vlm, base, points, grad=True, dropped=dropped)
    if metric is not None:
        scored = metric(logits[0], (a_s, a_b))
    else:
        scored = (logits[0, a_s] - logits[0, a_b]) if a_s != a_b else logits[0, a_s]
    keys = list(points)
    grads = torch.autograd.grad(scored, [got[k] for k in keys], allow_unused=True)
    out = {}
    for key, grad in zip(keys, grads):
        grad = torch.zeros_like(got[key]) if grad is None else grad
        for name, selector in groups(base).items():
            b_pos, s_pos = aligned_positions(selector, base, source)
            delta = src[key][0, s_pos].float() - got[key][0, b_pos].detach().float()
            out[key + (name,)] = float((delta * grad[0, b_pos].float()).sum())
    return out


@pytest.mark.parametrize("model_type", FAMILIES)
def test_attribution_equals_plain_pytorch_autograd_with_hooks(model_type):
    from interp.interventions import ImageCells

    vlm = tiny_vlm(model_type)
    pair = as_pairs(_pairs(1))[0]
    layers = [0, 1, vlm.n_layers - 1]
    sites = ("resid_pre", "attn_out", "mlp_out", "resid_post", "z")
    frame = attribution_sweep(
        vlm,
        [pair],
        sites=sites,
        positions=["changed", "other_image", "question", "last"],
        layers=layers,
        progress=False,
    )
    frame = frame[frame.site != "z"]
    assert len(frame) == len(layers) * 4 * 4

    def groups(base):
        rows, cols = base.grid.shape
        from interp.data.synthetic import boxes_mask
        from interp.inputs import load_image

        mask = boxes_mask(pair.changed_boxes, load_image(pair.base.image).size, rows, cols, min_fraction=1e-6)
        return {"changed": ImageCells(mask), "other_image": ImageCells(~mask), "question": "question", "last": "last"}

    reference = _reference(vlm, pair, [(l, s) for l in layers for s in sites if s != "z"], groups)
    denominator = frame.clean_logit_diff.iloc[0] - frame.corrupt_logit_diff.iloc[0]
    for row in frame.itertuples():
        expected = reference[(row.layer, row.site, row.group)]
        got = row.answer_logit_change if row.same_first_token else row.effect * denominator
        assert math.isclose(got, expected, rel_tol=1e-3, abs_tol=1e-6), (row, expected)
    assert max(abs(v) for v in reference.values()) > 1e-3  # not all zero


def test_per_head_attribution_sums_to_the_whole_attention_output():
    vlm = tiny_vlm("llava")
    pairs = _pairs(2)
    kwargs = dict(positions=["changed", "question", "last"], layers=[0, 2], progress=False)
    heads = attribution_sweep(vlm, pairs, sites=("z",), **kwargs)
    whole = attribution_sweep(vlm, pairs, sites=("attn_out",), **kwargs)
    n_heads = vlm.config.text_config.num_attention_heads
    assert sorted(heads["head"].unique()) == list(range(n_heads))
    summed = heads.groupby(["pair", "layer", "group"]).effect.sum()
    # attn_out = o_proj(z): the gradient at z is W_O^T times attn_out's, so the heads add up exactly
    joined = whole.set_index(["pair", "layer", "group"]).effect
    assert np.allclose(summed.loc[joined.index].values, joined.values, atol=1e-5)


def test_the_estimate_is_exact_where_the_metric_is_linear_in_the_site():
    """With the final norm taken out, the logits are linear in the last layer's output: the
    first-order estimate at resid_post / mlp_out of the last layer equals exact patching."""
    import interp

    vlm = interp.load("tiny:llava", attn_implementation="eager")  # a private copy: its norm is changed
    norm = vlm.adapter.resolve(vlm.model, "final_norm")
    norm.forward = lambda hidden, *args, **kwargs: hidden
    pairs = _pairs(3)
    kwargs = dict(
        sites=("mlp_out", "resid_post"),
        positions=["changed", "question", "last"],
        layers=[vlm.n_layers - 1],
        progress=False,
    )
    estimate = attribution_sweep(vlm, pairs, **kwargs)
    exact = patching_sweep(vlm, pairs, mode="naive", **kwargs)
    keys = ["pair", "site", "head", "layer", "group", "row", "col"]
    merged = exact.merge(estimate, on=keys, suffixes=("_exact", "_est"))
    assert len(merged) == len(exact) == len(estimate) == 3 * 2 * 3
    assert (merged.logit_diff_exact - merged.logit_diff_est).abs().max() < 1e-4
    last = merged[merged.group == "last"]
    assert (last.logit_diff_exact - last.corrupt_logit_diff_exact).abs().max() > 1e-3  # a real change


def _answer_logprob(logits, answers):
    return torch.log_softmax(logits.float(), -1)[answers[0]]


def test_a_metric_of_the_users_choice_equals_plain_autograd():
    """``metric=``: the source answer's log-probability attributed instead of the logit difference."""
    vlm = tiny_vlm("llava")
    pair = as_pairs(_pairs(1))[0]
    layers, sites = [0, vlm.n_layers - 1], ("resid_pre", "attn_out", "mlp_out")
    frame = attribution_sweep(
        vlm, [pair], sites=sites, positions=["question", "last"], layers=layers, metric=_answer_logprob, progress=False
    )
    groups = lambda base: {"question": "question", "last": "last"}  # noqa: E731
    reference = _reference(vlm, pair, [(l, s) for l in layers for s in sites], groups, metric=_answer_logprob)
    for row in frame.itertuples():
        expected = reference[(row.layer, row.site, row.group)]
        assert math.isclose(row.logit_diff - row.corrupt_logit_diff, expected, rel_tol=1e-3, abs_tol=1e-6)
    base = vlm.prepare(pair.base.image, pair.base.question)
    plain = vlm.run(base).logits[0].float()
    assert math.isclose(
        frame.corrupt_logit_diff.iloc[0],
        float(
            torch.log_softmax(plain, -1)[
                _first_token(vlm, vlm.prepare(pair.source.image, pair.source.question), pair.source.answer)
            ]
        ),
        abs_tol=1e-4,
    )
    assert max(abs(v) for v in reference.values()) > 1e-4


def test_graddrop_equals_plain_autograd_with_each_layer_stopped_by_hand():
    """AtP*'s GradDrop: (1 / (L - 1)) * sum over layers l of |the estimate with l's attention and
    MLP outputs detached|, each l's estimate from plain-PyTorch autograd with forward hooks."""
    vlm = tiny_vlm("llava")
    pair = as_pairs(_pairs(1))[0]
    layers = [0, 1, vlm.n_layers - 1]
    sites = ("resid_pre", "attn_out", "mlp_out")
    frame = attribution_sweep(
        vlm, [pair], sites=sites, positions=["question", "last"], layers=layers, method="atp*", progress=False
    )
    plain = attribution_sweep(vlm, [pair], sites=sites, positions=["question", "last"], layers=layers, progress=False)
    assert np.allclose(frame.effect, plain.effect)  # away from q and k, atp* estimates as atp does
    points = [(l, s) for l in layers for s in sites]
    groups = lambda base: {"question": "question", "last": "last"}  # noqa: E731
    dropped = [_reference(vlm, pair, points, groups, dropped=l) for l in range(vlm.n_layers)]
    scale = abs(frame.clean_logit_diff.iloc[0] - frame.corrupt_logit_diff.iloc[0])
    for row in frame.itertuples():
        key = (row.layer, row.site, row.group)
        expected = sum(abs(d[key]) for d in dropped) / (vlm.n_layers - 1)
        assert math.isclose(row.graddrop * scale, expected, rel_tol=1e-3, abs_tol=1e-6), (key, expected)
    last = frame[(frame.layer == vlm.n_layers - 1) & (frame.site == "mlp_out")]
    assert np.allclose(last.graddrop, last.effect.abs(), atol=1e-7)  # only its own layer drops it


def test_the_qk_fix_is_exact_where_only_the_softmax_is_nonlinear():
    """With the final norm taken out and the last MLP silenced, the logits are linear in the last
    layer's head outputs: AtP*'s recomputed softmax makes the estimate at its queries and keys
    exact, where the first-order estimate misses a sharpened attention's change."""
    import interp

    vlm = interp.load("tiny:llava", attn_implementation="eager")  # a private copy: its weights change
    vlm.adapter.resolve(vlm.model, "final_norm").forward = lambda hidden, *args, **kwargs: hidden
    block = vlm.adapter.resolve(vlm.model, "layers")[vlm.n_layers - 1]
    attn = getattr(block, vlm.adapter.attn_name)
    with torch.no_grad():
        getattr(block, vlm.adapter.mlp_name).down_proj.weight.zero_()
        attn.q_proj.weight.mul_(30.0)  # a sharp, nearly saturated softmax
        attn.o_proj.weight.mul_(30.0)
    pairs = _pairs(3)
    kwargs = dict(
        sites=("q", "k"),
        positions=["changed", "other_image", "question", "last"],
        layers=[vlm.n_layers - 1],
        progress=False,
    )
    exact = patching_sweep(vlm, pairs, mode="naive", **kwargs)
    keys = ["pair", "site", "head", "layer", "group", "row", "col"]
    error = {}
    for method in ("atp", "atp*"):
        merged = exact.merge(attribution_sweep(vlm, pairs, method=method, **kwargs), on=keys, suffixes=("", "_est"))
        assert len(merged) == len(exact) == 3 * 2 * 4
        error[method] = float((merged.logit_diff - merged.logit_diff_est).abs().max())
    change = float((exact.logit_diff - exact.corrupt_logit_diff).abs().max())
    assert error["atp*"] < 1e-6 < 1e-4 < error["atp"]
    assert change > 1e-3


def test_integrated_gradients_approach_the_exact_effect_of_patching_the_image():
    vlm = tiny_vlm("llava")
    pairs = _pairs(2)
    kwargs = dict(positions=["image"], layers=[0], progress=False)
    exact = patching_sweep(vlm, pairs, **kwargs).set_index("pair").effect  # the source run: 1
    atp = attribution_sweep(vlm, pairs, **kwargs).set_index("pair").effect
    ig = attribution_sweep(vlm, pairs, method="ig", steps=16, **kwargs).set_index("pair").effect
    assert np.allclose(exact.values, 1.0, atol=1e-3)
    assert (ig - exact).abs().max() < 0.05  # completeness: the gradient integrated along the input path
    assert (ig - exact).abs().max() <= (atp - exact).abs().max()
    one = attribution_sweep(vlm, pairs, method="ig", steps=1, **kwargs).set_index("pair").effect
    assert np.allclose(one.values, atp.values, atol=1e-6)  # one step is attribution patching


def test_attribution_under_remote_local_equals_the_local_run():
    vlm = tiny_vlm("llava")
    pairs = _pairs(1)
    kwargs = dict(sites=("resid_pre", "z"), heads=[0], positions=["changed", "last"], layers=[0, 2], progress=False)
    local = attribution_sweep(vlm, pairs, **kwargs)
    remote = attribution_sweep(vlm, pairs, remote="local", **kwargs)
    assert len(local) == len(remote) > 0
    assert np.allclose(local.logit_diff.values, remote.logit_diff.values, atol=1e-5)


def test_no_parameter_keeps_a_gradient_and_the_flags_are_restored():
    vlm = tiny_vlm("llava")
    before = [p.requires_grad for p in vlm.model.parameters()]
    plain = attribution_sweep(vlm, _pairs(1), positions=["last"], layers=[1], progress=False)
    with torch.no_grad():  # a caller's no_grad (a common notebook habit) does not stop the backward
        again = attribution_sweep(vlm, _pairs(1), positions=["last"], layers=[1], progress=False)
    assert np.allclose(plain.logit_diff.values, again.logit_diff.values)
    assert [p.requires_grad for p in vlm.model.parameters()] == before
    assert all(p.grad is None for p in vlm.model.parameters())


def test_a_resumed_attribution_reads_finished_pairs_back(tmp_path):
    vlm = tiny_vlm("llava")
    pairs = _pairs(2)
    path = tmp_path / "attribution.jsonl"
    kwargs = dict(positions=["changed", "last"], layers=[0, 1], progress=False)
    first = attribution_sweep(vlm, pairs, resume=path, **kwargs)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])  # the second pair's record torn
    again = attribution_sweep(vlm, pairs, resume=path, **kwargs)
    assert again.equals(first)
    assert len(path.read_text().splitlines()) == 2


# -- attention edges ---------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ("llava", "qwen2_vl"))
def test_the_knocked_out_head_outputs_equal_the_recorded_change(model_type):
    """The attention recomputed after a knockout (AtP*'s fix) is exact: the change of every
    head's output at the knocked-out queries equals the recorded z with and without it."""
    vlm = tiny_vlm(model_type)
    prepared = vlm.prepare(make_image(*TEST_IMAGE_SIZE), "What colour is the square?")
    layer = 1
    queries = _query_positions(prepared, "question")
    name = f"blocks.{layer}.attn.hook_z"
    plain = vlm.run(prepared, RecordResidual([name])).record(name, layer)
    cut = vlm.run(prepared, AttentionKnockout(queries, "image", [layer]), RecordResidual([name])).record(name, layer)
    captured = {}

    with vlm.trace(prepared):
        call = vlm.access.read(vlm.nnsight, layer, "attn_pattern")
        captured["change"] = _knocked_out_change(call, queries, prepared.image_positions.cpu()).save()
    change = captured["change"][0]
    observed = (cut - plain)[0, queries]
    assert observed.abs().max() > 1e-4
    assert torch.allclose(change.to(observed.dtype).reshape(observed.shape), observed, atol=1e-5)


def test_edge_attribution_tracks_the_exact_knockouts():
    vlm = tiny_vlm("llava")
    data = SyntheticVQA("test", seed=0)
    items = [data[i] for i in range(3)]
    estimate = edge_attribution(vlm, items, progress=False)
    exact = knockout_effects(vlm, items, progress=False)
    merged = estimate.merge(exact, on=["sample", "layer", "queries"])
    assert len(merged) == 3 * vlm.n_layers * 3
    assert np.allclose(merged.logprob_x, merged.logprob_y, atol=1e-5)
    assert (merged.estimate - merged.exact).abs().max() < 0.02
    assert np.corrcoef(merged.estimate, merged.exact)[0, 1] > 0.95
    last_layer_question = merged[(merged.layer == vlm.n_layers - 1) & (merged.queries == "question")]
    assert (last_layer_question.estimate.abs() < 1e-7).all() and (last_layer_question.exact.abs() < 1e-6).all()


# -- agreement: hand-worked ------------------------------------------------------------------


def _frame(values: dict, method: str | None = None) -> pd.DataFrame:
    rows = []
    for (pair, layer, group), effect in values.items():
        rows.append(
            {
                "pair": pair,
                "change": "colour",
                "site": "resid_pre",
                "head": -1,
                "layer": layer,
                "group": group,
                "row": -1,
                "col": -1,
                "same_first_token": False,
                "effect": effect,
                "answer_logit_change": 0.0,
            }
        )
    return pd.DataFrame(rows)


def test_agreement_scores_hand_worked_frames():
    conditions = [(0, "changed"), (0, "last"), (1, "changed"), (1, "last")]
    exact_means = [0.9, 0.05, -0.3, 0.6]
    est_means = [0.7, 0.6, 0.2, 0.5]  # ranks: exact 4, 2, 1, 3; estimate 4, 3, 1, 2
    exact = _frame({(p, l, g): v for p in ("a", "b") for (l, g), v in zip(conditions, exact_means)})
    est = _frame({(p, l, g): v for p in ("a", "b") for (l, g), v in zip(conditions, est_means)})
    table = agreement(exact, est, top_k=2, sign_threshold=0.1, n_boot=20)
    row = table.iloc[0]
    assert row.n_pairs == 2 and row.n_conditions == 4
    # Spearman: d = (0, -1, 0, 1) -> 1 - 6 * 2 / (4 * 15) = 0.8
    assert math.isclose(row.spearman, 0.8)
    assert row.top_k_overlap == 0.5  # top-2 |exact|: conditions 0 and 3; |estimate|: 0 and 1
    assert row.n_signed == 3 and math.isclose(row.sign_agreement, 2 / 3)  # -0.3 vs +0.2 disagrees


# -- bad input -------------------------------------------------------------------------------


def test_bad_inputs_each_give_one_clear_line():
    vlm = tiny_vlm("llava")
    pairs = _pairs(1)
    with pytest.raises(InterpError, match="unknown attribution method"):
        attribution_sweep(vlm, pairs, method="exact-ish", progress=False)
    with pytest.raises(InterpError, match="steps must be a positive integer"):
        attribution_sweep(vlm, pairs, method="ig", steps=0, progress=False)
    with pytest.raises(InterpError, match="metric must return one number per pair"):
        attribution_sweep(vlm, pairs, metric=lambda logits, answers: logits[:3], progress=False)
    with pytest.raises(InterpError, match="metric must be a function"):
        attribution_sweep(vlm, pairs, metric="logit_diff", progress=False)
    with pytest.raises(InterpError, match="cannot patch site 'attn_pattern'"):
        attribution_sweep(vlm, pairs, sites=("attn_pattern",), progress=False)
    with pytest.raises(InterpError, match="unknown query group"):
        edge_attribution(vlm, [SyntheticVQA("test", seed=0)[0]], queries=("image",), progress=False)
    size = TEST_IMAGE_SIZE
    uneven = [
        (
            (make_image(*size, seed=1), "What is it?", "red"),
            (make_image(*size, seed=2), "What colour is it now?", "blue"),
        )
    ]
    with pytest.raises(InputError, match="integrated gradients interpolate the LM input"):
        attribution_sweep(vlm, uneven, method="ig", positions=["last"], progress=False)
    with pytest.raises(InputError, match="the QK fix reuses the source's rotated queries and keys"):
        attribution_sweep(vlm, uneven, method="atp*", sites=("k",), positions=["last"], layers=[0], progress=False)


# -- the command -----------------------------------------------------------------------------


def test_patch_command_estimates_every_pair_and_validates_some(tmp_path):
    import json

    from interp.cli import main

    out = tmp_path / "atp"
    args = ["patch", "--model", "tiny:llava", "--pairs", "3", "--lens", "0", "--n-boot", "50", "--cell-layers", "1"]
    assert main(args + ["--method", "atp", "--validate", "2", "--out", str(out)]) == 0
    report = json.loads((out / "attribution.json").read_text())["attribution"]
    assert report["n_pairs"] == 3 and report["method"] == "atp"
    assert report["agreement"] and max(row["n_pairs"] for row in report["agreement"]) <= 2
    frame = pd.read_csv(out / "attribution_sweep.csv")
    assert frame.pair.nunique() == 3 and set(frame[frame.group == "cell"].pair) == set(frame.pair)
    vlm = tiny_vlm("llava")
    direct = attribution_sweep(
        vlm,
        SyntheticVQA("test", seed=0, image_size=vlm.scene_size).counterfactual_pairs(
            3, ("colour", "shape", "distractor"), seed=0
        ),
        positions=["changed", "other_image", "question", "last"],
        cell_layers=[1],
        progress=False,
    )
    assert np.allclose(np.sort(frame.logit_diff.values), np.sort(direct.logit_diff.values), atol=1e-5)
    ig = tmp_path / "ig"
    assert main(args + ["--method", "ig", "--ig-steps", "2", "--validate", "0", "--out", str(ig)]) == 0
    assert json.loads((ig / "attribution.json").read_text())["attribution"]["steps"] == 2
    star = tmp_path / "atp-star"
    assert main(args + ["--method", "atp*", "--sites", "k", "--validate", "2", "--out", str(star)]) == 0
    report = json.loads((star / "attribution.json").read_text())["attribution"]
    assert report["method"] == "atp*" and all("graddrop_spearman" in row for row in report["agreement"])
    assert "GradDrop vs exact size" in (star / "attribution.md").read_text()
    assert pd.read_csv(star / "attribution_sweep.csv").graddrop.notna().all()
