"""The engine: one bound schedule, two executors (nnsight, captured clean pass).

* An intervention written here, in the test file, runs on both executors with no change
  to library code, and both equal a plain-PyTorch hook implementation.
* Recorders below the restart layer read the clean pass; edits there are refused.
* ``interp reproduce`` runs one clean forward per sample (plus v2's crop), and its
  numbers equal those of the analyses run one by one.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from interp.analysis import attention_maps, contrastive_eval, early_output, masking_sweep
from interp.analysis.clean import sample_pass
from interp.analysis.items import Item
from interp.analysis.teacher import teacher_force
from interp.engine import capture, continue_from, unembed
from interp.errors import InterpError
from interp.interventions import Intervention, Plan, RecordAttention, ScaleImageTokens

from ..conftest import TEST_IMAGE_SIZE, assert_reports_close, make_image, report_numbers, tiny_vlm


class ScaleText(Intervention):
    """Multiply the text (non-image) rows of a residual-stream site by ``factor``."""

    def __init__(self, layer: int, site: str, factor: float):
        self.layers = [layer]
        self.site = site
        self.factor = factor

    def sites(self):
        return [(self.layers[0], self.site)]

    def edit_hidden(self, layer, site, hidden, ctx):
        keep = torch.ones(hidden.shape[1], dtype=torch.bool)
        keep[ctx.local_rows(ctx.image_positions.cpu(), hidden.shape[1]).cpu()] = False
        new = hidden.clone()
        new[:, keep.to(hidden.device)] = hidden[:, keep.to(hidden.device)] * self.factor
        return new


def _item(seed=0):
    height, width = TEST_IMAGE_SIZE
    return Item(
        id=str(seed),
        image=make_image(height, width, seed=seed),
        question="What colour is the square?",
        answers=("red",),
        kind="attribute",
        boxes=((0, 0, width // 2, height // 2),),
    )


def _hooked_logits(vlm, tf, layer, site, factor):
    """Plain PyTorch: the same edit with a module hook, no nnsight, no interp executor."""
    block = vlm.adapter.resolve(vlm.model, "layers")[layer]
    image = tf.prepared.image_positions.to(vlm.device)

    def edit(hidden):
        keep = torch.ones(hidden.shape[1], dtype=torch.bool, device=hidden.device)
        keep[image] = False
        new = hidden.clone()
        new[:, keep] = hidden[:, keep] * factor
        return new

    if site == "resid_pre":

        def hook(module, args, kwargs):
            if args:
                return (edit(args[0]),) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}

        handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    else:
        module = {
            "attn_out": getattr(block, vlm.adapter.attn_name),
            "mlp_out": getattr(block, vlm.adapter.mlp_name),
            "resid_post": block,
        }[site]

        def hook(module, args, output):
            if isinstance(output, tuple):
                return (edit(output[0]),) + tuple(output[1:])
            return edit(output)

        handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = vlm.model(**tf.prepared.inputs)
    finally:
        handle.remove()
    return out.logits[0, tf.positions].float()


@pytest.mark.parametrize("model_type", ["llava", "gemma3", "qwen2_vl"])
@pytest.mark.parametrize("site", ["resid_pre", "attn_out", "mlp_out", "resid_post"])
def test_a_new_intervention_runs_on_both_executors(model_type, site):
    vlm = tiny_vlm(model_type, "sdpa")
    item = _item()
    tf = teacher_force(vlm, vlm.prepare(item.image, item.question), item.answers[0])
    layer = 1
    edit = ScaleText(layer, site, 0.25)
    through_nnsight = vlm.run(tf.prepared, edit, logit_positions=tf.positions.tolist()).logits[0].float()
    clean = capture(vlm, tf.prepared, tf.positions)
    hidden, _ = continue_from(vlm, clean, layer, [Plan(edit).bind(vlm, tf.prepared)])
    fast = unembed(vlm, hidden)[0]
    reference = _hooked_logits(vlm, tf, layer, site, 0.25)
    assert (through_nnsight - reference).abs().max() < 1e-4
    assert (fast - reference).abs().max() < 1e-4
    # and the edit matters
    assert (reference - clean.logits).abs().max() > 1e-3


def test_recorders_below_the_restart_read_the_clean_pass_and_edits_there_are_refused():
    vlm = tiny_vlm("llava", "sdpa")
    item = _item()
    tf = teacher_force(vlm, vlm.prepare(item.image, item.question), item.answers[0])
    last = [tf.last_prompt_position]
    clean = capture(vlm, tf.prepared, tf.positions, [RecordAttention("all", query=last)])
    recorder = RecordAttention([0, 1], query=last, name="mine")
    _, contexts = continue_from(vlm, clean, 2, [Plan(recorder).bind(vlm, tf.prepared)])
    for layer in (0, 1):
        assert torch.equal(contexts[0].records[("mine", layer, 0)], clean.records[("attention", layer, 0)])
    with pytest.raises(InterpError, match="before the restart layer"):
        continue_from(vlm, clean, 2, [Plan(ScaleImageTokens(0)).bind(vlm, tf.prepared)])
    with pytest.raises(InterpError, match="did not record"):  # another query than the clean pass recorded
        continue_from(vlm, clean, 2, [Plan(RecordAttention([0], query=[0])).bind(vlm, tf.prepared)])
    with pytest.raises(InterpError, match="fast path does not recompute"):  # attention above the restart
        continue_from(vlm, clean, 0, [Plan(RecordAttention([1], query=last)).bind(vlm, tf.prepared)])


def test_clean_pass_attention_equals_the_prompt_alone():
    """Causal attention: the last prompt token attends the same with the answer appended."""
    vlm = tiny_vlm("llava", "sdpa")
    item = _item()
    sp = sample_pass(vlm, item, restartable=True)
    alone = vlm.run(sp.prepared, RecordAttention("all"))
    for layer, values in sp.attention().items():
        assert torch.allclose(values, alone.record("attention", layer)[0, 0].float(), atol=1e-6)


def test_reproduce_runs_one_clean_pass_per_sample_and_equals_the_analyses_one_by_one(tmp_path):
    from interp.analysis.reproduce import ReproduceConfig, Tables, choose_review_layer, reproduce
    from interp.analysis.report import write_report
    from interp.analysis.stats import bootstrap_mean_ci, detect_fusion, layer_effects

    vlm = tiny_vlm("llava", "sdpa")
    items = [_item(seed) for seed in range(3)]
    config = ReproduceConfig(n_boot=200, progress=False)
    report = reproduce(vlm, items, tmp_path / "pipeline", config=config)
    counts = report["counts"]
    assert counts["clean_forwards_per_sample"] == 1.0
    assert counts["crop_forwards_per_sample"] == 1.0
    assert counts.get("full_forward", 0) == 0 and counts.get("kv_forward", 0) == 0
    assert counts["generate"] == 2  # the contrastive figure's example, without and with the mask

    # the same analyses, each run on its own (its own passes), through the same report code
    sweep = masking_sweep(vlm, items, variants=config.variants, window=config.window, progress=False)
    effects = layer_effects(sweep, n_boot=config.n_boot, seed=config.seed)
    baseline = bootstrap_mean_ci(
        sweep[sweep.variant == "baseline"].correct.values, n_boot=config.n_boot, seed=config.seed
    )
    findings = {v: detect_fusion(effects, variant=v, baseline=baseline[0]) for v in config.variants}
    review, source = choose_review_layer(effects, findings["single"], vlm.n_layers)
    maps = attention_maps(vlm, items, progress=False)
    lens = early_output(vlm, items, progress=False)
    contrastive = contrastive_eval(
        vlm,
        items,
        review_layer=review,
        fusion_layers=findings["single"].fusion_layers,
        rhos=config.rhos,
        primary=config.primary,
        progress=False,
    )
    (tmp_path / "separate").mkdir()
    separate = write_report(
        vlm,
        Tables(items, sweep, maps, lens, contrastive, effects, baseline, findings, review, source),
        config,
        tmp_path / "separate",
    )
    assert len(report_numbers(report)) > 300
    assert_reports_close(report, separate, atol=1e-5)
    assert report["masking"]["findings"] == separate["masking"]["findings"]
    assert json.loads((tmp_path / "pipeline" / "report.json").read_text())["counts"] == counts
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "pipeline" / "masking_sweep.csv"),
        pd.read_csv(tmp_path / "separate" / "masking_sweep.csv"),
        atol=1e-5,
    )


def test_reproduce_reruns_a_released_prefix_and_counts_it(tmp_path):
    from interp.analysis.reproduce import ReproduceConfig, reproduce

    vlm = tiny_vlm("llava", "sdpa")
    items = [_item(seed) for seed in range(2)]
    kept = reproduce(vlm, items, tmp_path / "kept", config=ReproduceConfig(n_boot=100, progress=False))
    tight = reproduce(
        vlm, items, tmp_path / "tight", config=ReproduceConfig(n_boot=100, progress=False, keep_prefix_mb=0)
    )
    assert kept["counts"]["clean_forward"] == 2 and tight["counts"]["clean_forward"] == 4
    assert_reports_close(kept, tight, atol=1e-6)
