"""Shared fixtures: tiny models of every family, a test image, plain-PyTorch references."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*requires torchvision.*")


def make_image(height: int = 48, width: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    array = (rng.uniform(0, 1, size=(height, width, 3)) * 255).astype("uint8")
    return Image.fromarray(array)


@pytest.fixture(scope="session")
def image() -> Image.Image:
    return make_image()


_CACHE: dict = {}


def tiny_vlm(model_type: str, attn: str = "eager"):
    """A cached tiny VLM (weights are never modified by the tests)."""
    import interp

    key = (model_type, attn)
    if key not in _CACHE:
        _CACHE[key] = interp.load(f"tiny:{model_type}", attn_implementation=attn)
    return _CACHE[key]


def sample_for(vlm, image=None, question: str = "What colour is the square?"):
    adapter = vlm.adapter
    size = adapter.extra.get("test_image_size", (48, 64))
    return vlm.prepare(image if image is not None else make_image(*size), question)


torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
