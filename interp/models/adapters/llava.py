"""LLaVA-1.5 (``llava``): one CLIP grid per image, CLS dropped by the default strategy."""

from __future__ import annotations

import torch

from .base import FamilyAdapter, ImageLayout, row_major, split_by_counts


class LlavaAdapter(FamilyAdapter):
    def image_layouts(self, inputs, config, row=0):
        pixel_values = torch.as_tensor(inputs["pixel_values"])
        patch = int(config.vision_config.patch_size)
        rows, cols = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
        keeps_cls = getattr(config, "vision_feature_select_strategy", "default") == "full"
        per_image = rows * cols + (1 if keeps_cls else 0)
        first, count = self.images_in_row(inputs, row, pixel_values.shape[0])
        runs = split_by_counts(self.image_positions(inputs, config, row), [per_image] * count, self.name)
        layouts = []
        for i, run in enumerate(runs):
            cells = run[1:] if keeps_cls else run
            layouts.append(ImageLayout(first + i, run, (row_major(cells, rows, cols, "patches"),)))
        return layouts


ADAPTER = LlavaAdapter(
    name="LLaVA",
    model_types=("llava",),
    batched_generation=True,
    batched_forward=True,
    notes="LLaVA-1.5: CLIP ViT grid (24x24 at 336 px), one token per patch.",
)
