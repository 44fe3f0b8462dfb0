"""TransformerLens and nnsight habits on ``vlm``: run_with_cache, ActivationCache,
run_with_hooks, the extra hook points — each checked against an independent computation
(HF eager ``output_attentions``, plain PyTorch hooks, the model's own algebra)."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.cache import ActivationCache
from interp.errors import HookNameError, InterpError
from interp.hooks import natural_key

from .conftest import TEST_IMAGE_SIZE, make_image, tiny_vlm


def _eager_twin(vlm):
    """The same weights under eager attention, for HF's own output_attentions."""
    import copy

    twin = copy.deepcopy(vlm.model)
    twin.set_attn_implementation("eager")
    return twin


def _prepared(vlm):
    return vlm.prepare(make_image(*TEST_IMAGE_SIZE), "What colour is the square?")


@pytest.fixture(scope="module")
def organism():
    return interp.load("organism")


@pytest.mark.parametrize("which", ["organism", "qwen2_vl"])
def test_a_transformer_lens_snippet_runs_unchanged(which, request):
    vlm = request.getfixturevalue("organism") if which == "organism" else tiny_vlm("qwen2_vl", "sdpa")
    x = _prepared(vlm)
    layer = min(5, vlm.n_layers - 1)
    logits, cache = vlm.run_with_cache(x)
    with torch.no_grad():
        hf = _eager_twin(vlm)(**x.inputs, output_attentions=True)
    assert logits.shape == hf.logits.shape
    assert torch.allclose(logits, hf.logits, atol=1e-4)
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
    assert torch.allclose(pattern, hf.attentions[layer], atol=1e-5)
    assert torch.equal(cache["pattern", layer], pattern)

    # run_with_hooks: zero the image positions at blocks.3.hook_resid_pre, TL's fn(activation, hook)
    image = x.image_positions
    seen = []

    def zero_image(activation, hook):
        seen.append((hook.name, hook.layer()))
        activation = activation.clone()
        activation[:, image] = 0
        return activation

    hooked = vlm.run_with_hooks(x, fwd_hooks=[("blocks.3.hook_resid_pre", zero_image)])
    assert seen == [("blocks.3.hook_resid_pre", 3)]

    def pre_hook(module, args, kwargs):
        hidden = (args[0] if args else kwargs["hidden_states"]).clone()
        hidden[:, image] = 0
        return ((hidden,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

    handle = vlm.adapter.resolve(vlm.model, "layers")[3].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with torch.no_grad():
            reference = vlm.model(**x.inputs).logits
    finally:
        handle.remove()
    assert torch.allclose(hooked, reference, atol=1e-4)
    assert (hooked - logits).abs().max() > 1e-3  # the edit matters


def test_extra_hook_points_equal_plain_hooks_and_the_models_algebra():
    vlm = tiny_vlm("llava", "sdpa")
    x = _prepared(vlm)
    _, lean = vlm.run_with_cache(x)
    assert not any(name.endswith("attn.hook_result") for name in lean)  # TL: only when asked
    _, cache = vlm.run_with_cache(x, use_attn_result=True)
    assert set(cache.keys()) - set(lean.keys()) == {f"blocks.{l}.attn.hook_result" for l in range(vlm.n_layers)}
    _, named = vlm.run_with_cache(x, ["blocks.1.attn.hook_result"])  # a named site is always cached
    assert torch.equal(named["result", 1], cache["result", 1])
    layer = 1
    block = vlm.adapter.resolve(vlm.model, "layers")[layer]
    attn = block.self_attn
    got = {}
    handles = [
        attn.q_proj.register_forward_hook(lambda m, a, o: got.__setitem__("q", o)),
        attn.o_proj.register_forward_pre_hook(lambda m, a: got.__setitem__("z", a[0])),
        vlm.adapter.resolve(vlm.model, "vision_layers")[0].register_forward_hook(
            lambda m, a, o: got.__setitem__("vision", o[0] if isinstance(o, tuple) else o)
        ),
        vlm.adapter.resolve(vlm.model, "embed").register_forward_hook(lambda m, a, o: got.__setitem__("embed", o)),
    ]
    try:
        with torch.no_grad():
            vlm.model(**x.inputs)
    finally:
        for handle in handles:
            handle.remove()
    head_dim = vlm.adapter.head_dim(vlm.config)
    q = cache["q", layer]
    assert q.shape[-1] == head_dim and torch.allclose(q.flatten(-2), got["q"])
    assert torch.allclose(cache["z", layer].flatten(-2), got["z"])
    assert torch.allclose(cache["vision.blocks.0.hook_resid_post"], got["vision"])
    assert torch.allclose(cache["hook_embed"], got["embed"])
    # per-head results sum to the attention output (this family's o_proj has no bias)
    assert torch.allclose(cache["result", layer].sum(dim=2), cache["attn_out", layer], atol=1e-5)
    # Llama-style block: resid_mid = resid_pre + attn_out, resid_post = resid_mid + mlp_out
    assert torch.allclose(cache["resid_mid", layer], cache["resid_pre", layer] + cache["attn_out", layer], atol=1e-5)
    assert torch.allclose(cache["resid_post", layer], cache["resid_mid", layer] + cache["mlp_out", layer], atol=1e-5)
    # the projected image features are what enters the image positions of layer 0
    projected = cache["vision.hook_projected"].reshape(-1, cache["resid_pre", 0].shape[-1])
    assert torch.allclose(cache["resid_pre", 0][0, x.image_positions], projected, atol=1e-6)
    assert cache.keys() == sorted(cache.keys(), key=natural_key)


def test_activation_cache_helpers(tmp_path):
    vlm = tiny_vlm("llava", "sdpa")
    x = _prepared(vlm)
    logits, cache = vlm.run_with_cache(
        x, names_filter=lambda name: "resid" in name or name == "ln_final.hook_normalized"
    )
    assert all("resid" in name or name.startswith("ln_final") for name in cache)
    stacked = cache.stack_activation("resid_post")
    assert stacked.shape[0] == vlm.n_layers and torch.equal(stacked[2], cache["resid_post", 2])
    resid, labels = cache.accumulated_resid(incl_mid=True, apply_ln=True, return_labels=True)
    assert labels[0] == "0_pre" and labels[1] == "0_mid" and labels[-1] == "final_post"
    assert torch.allclose(resid[-1], cache["ln_final.hook_normalized"], atol=1e-5)  # the final norm, as the model
    single = cache.remove_batch_dim()
    assert single["resid_pre", 0].shape == cache["resid_pre", 0].shape[1:]
    path = cache.save(tmp_path / "cache.safetensors")
    again = ActivationCache.load(path)
    assert again.keys() == cache.keys() and all(torch.equal(again[k], cache[k]) for k in cache)
    assert cache["resid_pre", -1] is cache["resid_pre", vlm.n_layers - 1]
    with pytest.raises(HookNameError, match="not in the cache"):
        cache["pattern", 0]
    (tmp_path / "junk.safetensors").write_bytes(b"")
    with pytest.raises(InterpError, match="not a readable safetensors file"):
        ActivationCache.load(tmp_path / "junk.safetensors")


def test_hooks_say_the_hook_name_and_read_only_points_refuse_writes():
    vlm = tiny_vlm("llava", "sdpa")
    x = _prepared(vlm)
    with pytest.raises(InterpError, match="blocks.0.hook_resid_pre was read after"), vlm.trace(x):
        vlm.read("blocks.1.hook_resid_pre")
        vlm.read("blocks.0.hook_resid_pre")
    with pytest.raises(InterpError, match="read-only"):
        vlm.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda a, hook: a * 0)])
    with pytest.raises(HookNameError, match="unknown hook name"):
        vlm.run_with_cache(x, "blocks.0.hook_nothing")
    with pytest.raises(HookNameError, match="matched no hook"):
        vlm.run_with_cache(x, lambda name: False)
    with pytest.raises(Exception, match="vision-tower blocks"):
        vlm.run_with_cache(x, "vision.blocks.99.hook_resid_post")
    with pytest.raises(InterpError, match="must be an integer"):
        interp.RecordAttention(layers=[1.5]).bind(vlm.n_layers, x)


def test_remote_local_cache_equals_local():
    vlm = tiny_vlm("llava", "sdpa")
    x = _prepared(vlm)
    names = ["blocks.0.attn.hook_q", "blocks.1.hook_resid_mid", "vision.hook_projected"]
    local_logits, local = vlm.run_with_cache(x, names)
    remote_logits, remote = vlm.run_with_cache(x, names, remote="local")
    assert torch.allclose(local_logits, remote_logits)
    assert all(torch.allclose(local[k], remote[k]) for k in names)
