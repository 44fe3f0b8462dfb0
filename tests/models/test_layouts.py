"""Image-token geometry: every family's grid puts each image region on the right cells.

Independent check: with the vision tower's attention zeroed every image token
depends only on its own pixels (patch embedding, per-token projector, local pooling or
merging). Brightening one corner of the image must then change exactly the
tokens the adapter places in that corner of each view, and no others.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from interp.inputs import prepare
from interp.models.adapters import adapter_for
from interp.models.tiny import build_tiny, tiny_model_types

from ..conftest import TEST_IMAGE_SIZE


def _layer0_input(model, inputs):
    captured = {}

    def hook(module, args, kwargs):
        captured["h"] = (args[0] if args else kwargs["hidden_states"]).detach()

    layers = adapter_for(model.config).resolve(model, "layers")
    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return captured["h"][0]


def _make_vision_local(model):
    """Zero every attention block of the vision tower: tokens stop mixing."""
    zeroed = 0
    for name, module in model.named_modules():
        in_vision = ("vision" in name or "visual" in name) and "language" not in name
        if in_vision and "attention" in type(module).__name__.lower():
            for parameter in module.parameters():
                torch.nn.init.zeros_(parameter)
            zeroed += 1
    assert zeroed, "no vision attention module found"


def _images(height: int, width: int):
    rng = np.random.default_rng(0)
    base = (rng.uniform(0.35, 0.65, size=(height, width, 3)) * 255).astype("uint8")
    bright = base.copy()
    # top-right corner: rows [0, h/4), cols [3w/4, w)
    bright[: height // 4, 3 * width // 4 :] = 255
    return Image.fromarray(base), Image.fromarray(bright)


@pytest.mark.parametrize("model_type", tiny_model_types())
def test_corner_perturbation_lands_in_the_corner_cells(model_type):
    model, processor = build_tiny(model_type)
    _make_vision_local(model)
    adapter = adapter_for(model.config)
    size = TEST_IMAGE_SIZE
    plain, bright = _images(*size)
    a = prepare(processor, adapter, model.config, plain, "what is here?")
    b = prepare(processor, adapter, model.config, bright, "what is here?")
    assert torch.equal(a.image_positions, b.image_positions)
    diff = (_layer0_input(model, a.inputs) - _layer0_input(model, b.inputs)).abs().amax(-1)
    changed = diff > 1e-5
    # only image tokens may change
    text_mask = torch.ones_like(changed)
    text_mask[a.image_positions] = False
    assert not changed[text_mask].any()
    layout = a.layouts[0]
    assert len(a.layouts) == 1
    for view in layout.views:
        pos = view.positions
        valid = pos >= 0
        hit = torch.zeros_like(pos, dtype=torch.bool)
        hit[valid] = changed[pos[valid]]
        assert hit.any(), f"{model_type}/{view.name}: no cell changed"
        rows, cols = hit.nonzero(as_tuple=True)
        # cell centres in normalised image coordinates
        r = (rows.float() + 0.5) / view.rows
        c = (cols.float() + 0.5) / view.cols
        assert (r < 0.5).all() and (c > 0.5).all(), f"{model_type}/{view.name}: changed cells outside the corner"
        # the corner cell itself changed
        corner = pos[0, -1]
        assert corner >= 0 and changed[corner], f"{model_type}/{view.name}: corner cell unchanged"
