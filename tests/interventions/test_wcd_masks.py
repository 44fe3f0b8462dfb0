"""The authors' masks against plain-PyTorch references (eager attentions + forward pre-hooks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.errors import InterpError
from interp.interventions import ReviewLayerMask, SoftImageMask
from interp.interventions.wcd import authors_difference, bottom_k_keep, general_attention

from ..conftest import TEST_IMAGE_SIZE, sample_for, tiny_vlm


def _np_sq_jsd(p, q):
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    kl = lambda a, b: float(np.sum(np.where(a > 0, a * np.log2(np.where(a > 0, a, 1) / b), 0.0)))  # noqa: E731
    return 0.5 * (kl(p, m) + kl(q, m))


def _scaled_forward(vlm, prepared, layer, factors):
    """Final logits with the image rows at ``layer``'s input multiplied by ``factors``."""
    image = prepared.image_positions

    def hook(module, args, kwargs):
        hidden = (args[0] if args else kwargs["hidden_states"]).clone()
        hidden[:, image] = hidden[:, image] * factors.to(hidden.dtype)[:, None]
        if args:
            return (hidden,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handle = vlm.adapter.resolve(vlm.model, "layers")[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            return vlm.model(**prepared.inputs).logits[:, -1]
    finally:
        handle.remove()


def test_bottom_k_ties_mask_more_than_k():
    values = torch.tensor([0.5, 1e-9, 1e-9, 1e-9, 0.3])
    keep = bottom_k_keep(values, 0.4)  # k = 2, the 2nd smallest is 1e-9: all three ties go
    assert keep.tolist() == [True, False, False, False, True]
    assert bottom_k_keep(values, 0.1).all()  # int(0.5) = 0: nothing masked
    assert bottom_k_keep(torch.tensor([3.0, 1.0, 2.0, 4.0]), 0.5).tolist() == [True, False, False, True]


def test_authors_difference_by_hand():
    a0 = torch.tensor([0.25, 0.25, 0.25, 0.25])
    a1 = torch.tensor([0.7, 0.1, 0.1, 0.1])  # farthest from the reference
    ref = torch.tensor([0.1, 0.2, 0.3, 0.0])  # raw (sums to 0.6): rescaled only for the JSD
    pre, diff = authors_difference([a0, a1, ref])
    assert _np_sq_jsd(ref.numpy(), a1.numpy()) > _np_sq_jsd(ref.numpy(), a0.numpy())
    assert pre == 1
    assert diff.tolist() == pytest.approx([1e-9, 0.1, 0.2, 1e-9])


@pytest.mark.parametrize("model_type", ["llava", "qwen2_vl"])
def test_review_layer_mask_equals_reference(model_type):
    vlm = tiny_vlm(model_type)  # eager
    prepared = sample_for(vlm)
    review = vlm.n_layers - 1
    with torch.no_grad():
        attentions = vlm.model(**prepared.inputs, output_attentions=True).attentions
    image = prepared.image_positions
    maps = [attentions[l][0, :, -1, image].mean(0).float().numpy() for l in range(review)]
    ref = maps[-1]
    jsds = [_np_sq_jsd(ref, maps[i]) for i in range(review - 1)]
    pre = int(np.argmax(jsds))
    diff = ref - maps[pre]
    diff[diff < 0] = 1e-9
    k = int(0.5 * diff.size)
    keep = diff > np.sort(diff)[k - 1]
    factors = torch.where(torch.as_tensor(keep), 1.0, 1e-9)
    expected = _scaled_forward(vlm, prepared, review, factors)
    result = vlm.run(prepared, ReviewLayerMask(review, ratio=0.5))
    assert int(result.records[("wcd_pre_layer", review, 0)]) == pre
    assert result.records[("wcd_keep", review, 0)].tolist() == keep.tolist()
    assert torch.allclose(result.logits, expected, atol=1e-5)
    clean = vlm.run(prepared).logits
    assert not torch.allclose(clean, expected, atol=1e-5)


@pytest.mark.parametrize("model_type", ["llava", "qwen2_vl"])
def test_soft_mask_and_general_attention_equal_reference(model_type):
    vlm = tiny_vlm(model_type)
    prepared = sample_for(vlm)
    general = vlm.prepare(_image_of(vlm), "Write a general description of the image.")
    with torch.no_grad():
        attentions = vlm.model(**general.inputs, output_attentions=True).attentions
    expected_map = attentions[-1][0, :, -1, general.image_positions].mean(0)
    got = general_attention(vlm, _image_of(vlm))
    assert torch.allclose(got, expected_map, atol=1e-6)
    keep = got > torch.sort(got).values[int(0.2 * got.numel()) - 1]
    expected = _scaled_forward(vlm, prepared, 0, torch.where(keep, 1.0, 0.1))
    result = vlm.run(prepared, SoftImageMask(got))
    assert torch.allclose(result.logits, expected, atol=1e-5)
    assert (~result.records[("wcd_soft_keep", 0, 0)]).sum() >= int(0.2 * got.numel())


def _image_of(vlm):
    from ..conftest import make_image

    return make_image(*TEST_IMAGE_SIZE)


def test_mask_bad_inputs():
    vlm = tiny_vlm("llava")
    prepared = sample_for(vlm)
    with pytest.raises(InterpError, match="ratio"):
        ReviewLayerMask(2, ratio=1.5)
    with pytest.raises(InterpError, match="review layer must be >= 2"):
        vlm.run(prepared, ReviewLayerMask(1))
    with pytest.raises(InterpError, match="image tokens"):
        vlm.run(prepared, SoftImageMask(torch.ones(prepared.n_image_tokens + 1)))
