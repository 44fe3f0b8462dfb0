"""The site registry: the table every part reads, and a new site as one row."""

from __future__ import annotations

import torch

import interp.sites as registry
from interp.hooks import all_hook_names, hook_name, layer_sites, parse_hook_name, read_only
from interp.interventions.patch import PATCH_SITES

from .conftest import sample_for, tiny_vlm


def test_the_table_is_what_the_parts_use():
    assert (
        registry.keys(restartable=True)
        == PATCH_SITES
        == (
            "resid_pre",
            "q",
            "k",
            "v",
            "z",
            "attn_out",
            "mlp_out",
            "resid_post",
        )
    )
    assert [s for s in layer_sites()] == [
        "resid_pre",
        "q",
        "k",
        "v",
        "attn_pattern",
        "z",
        "result",
        "attn_out",
        "resid_mid",
        "mlp_out",
        "resid_post",
    ]
    assert {s for s in registry.sites() if read_only(s)} == {"attn_pattern", "result", "resid_mid"}
    for row in registry.REGISTRY:  # every name parses back to its row, in forward order
        name = hook_name(3 if row.layered else None, row.key)
        point = parse_hook_name(name, 8, 8)
        assert point.site == row.key and point.name == name
    points = [parse_hook_name(name, 2, 1) for name in all_hook_names(2, 1)]
    assert points == sorted(points, key=lambda point: point.order)


def test_a_new_site_is_one_row_that_run_with_hooks_reads(monkeypatch):
    """``blocks.{l}.ln1.hook_normalized`` (the attention's normalised input, as TransformerLens names
    it) added as one row: the parser, the order, nnsight access and run_with_hooks follow."""
    row = registry.Site("ln1", "blocks.{l}.ln1.hook_normalized", "decoder", "attn", "input", 0.5, writable=False)
    monkeypatch.setattr(registry, "REGISTRY", registry.REGISTRY + (row,))
    vlm = tiny_vlm("llava", "sdpa")
    x = sample_for(vlm)
    assert "blocks.1.ln1.hook_normalized" in vlm.hook_names()
    seen = {}

    def look(activation, hook):
        seen[hook.name] = activation.clone()

    vlm.run_with_hooks(x, fwd_hooks=[("blocks.1.ln1.hook_normalized", look)])
    got = {}
    norm = vlm.adapter.resolve(vlm.model, "layers")[1].input_layernorm
    handle = norm.register_forward_hook(lambda module, args, out: got.__setitem__("ln1", out))
    try:
        with torch.no_grad():
            vlm.model(**x.inputs)
    finally:
        handle.remove()
    assert torch.allclose(seen["blocks.1.ln1.hook_normalized"], got["ln1"], atol=1e-6)
