"""Qwen2-VL (``qwen2_vl``): one merged patch grid per image, sized by ``image_grid_thw``.

The image processor cuts the resized image into ``patch_size`` patches, giving a
``(t, h, w)`` patch grid per image (``image_grid_thw``; ``t == 1`` for a still
image). The vision tower's merger fuses each ``merge x merge`` block of patches
(``vision_config.spatial_merge_size``, 2) into one LM token, and the tokens come out
row-major over the merged grid: ``h / merge`` rows by ``w / merge`` columns. Each
image's run of ``<|image_pad|>`` tokens is exactly that grid, row-major, with no
extra tokens (``<|vision_start|>``/``<|vision_end|>`` around it are not image
tokens). In the LM the tokens get M-RoPE positions (temporal, row, column), which
is why the forward needs ``image_grid_thw`` and ``mm_token_type_ids``.
"""

from __future__ import annotations

import torch

from ...errors import InputError
from .base import FamilyAdapter, GridView, ImageLayout, row_major, split_by_counts


QWEN_FALLBACK_PROMPT = (
    "<|im_start|>user\n<|vision_start|>{image}<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
)


class QwenVLAdapter(FamilyAdapter):
    """Shared by Qwen2-VL, Qwen2.5-VL and Qwen3-VL (same token geometry)."""

    def merged_grids(self, inputs, config) -> list[tuple[int, int, int]]:
        """Per image of the whole batch: (frames, rows, cols) of its LM-token grid."""
        grid_thw = torch.as_tensor(inputs["image_grid_thw"]).reshape(-1, 3).tolist()
        merge = int(config.vision_config.spatial_merge_size)
        out = []
        for t, h, w in grid_thw:
            if h % merge or w % merge:
                raise InputError(
                    f"{self.name}: image grid {h}x{w} patches is not divisible by the spatial merge size {merge}"
                )
            out.append((int(t), int(h) // merge, int(w) // merge))
        return out

    def row_images(self, inputs, config, counts: list[int], row: int) -> tuple[int, int]:
        """(first image, number of images) of batch row ``row``.

        ``image_grid_thw`` lists the images of all rows in order; the model fills the
        image tokens of the flattened batch in that order, so each row takes as many
        images as its image-token count needs.
        """
        ids = torch.as_tensor(inputs["input_ids"])
        per_row = (ids == self.image_token_id(config)).sum(-1).tolist()
        start = 0
        for r, need in enumerate(per_row):
            end, taken = start, 0
            while taken < need and end < len(counts):
                taken += counts[end]
                end += 1
            if r == row:
                return start, end - start
            start = end
        raise InputError(f"{self.name}: batch row {row} out of range ({len(per_row)} rows)")

    def image_layouts(self, inputs, config, row=0):
        grids = self.merged_grids(inputs, config)
        counts = [t * h * w for t, h, w in grids]
        ids = torch.as_tensor(inputs["input_ids"])
        every_row = (ids == self.image_token_id(config)).reshape(-1).nonzero().flatten()
        split_by_counts(every_row, counts, self.name)  # the whole batch: one clear error on a mismatch
        first, count = self.row_images(inputs, config, counts, row)
        runs = split_by_counts(self.image_positions(inputs, config, row), counts[first : first + count], self.name)
        layouts = []
        for i, run in enumerate(runs):
            t, h, w = grids[first + i]
            frames = run.reshape(t, h * w)
            views = [row_major(frames[0], h, w, "merged")]
            views += [GridView(f"frame{k}", frames[k].reshape(h, w).clone()) for k in range(1, t)]
            layouts.append(ImageLayout(first + i, run, tuple(views)))
        return layouts


ADAPTER = QwenVLAdapter(
    name="Qwen2-VL",
    model_types=("qwen2_vl",),
    vision_layers_path="model.visual.blocks",
    projector_path="model.visual.merger",
    required_inputs=("input_ids", "pixel_values", "image_grid_thw", "mm_token_type_ids"),
    appended_token_fields=(("mm_token_type_ids", 0),),  # appended text is text
    fallback_prompt=QWEN_FALLBACK_PROMPT,
    batched_forward=True,
    notes=(
        "Qwen2-VL: dynamic resolution; each LM token is a 2x2 merge of 14 px patches, "
        "row-major over (h/2, w/2) from image_grid_thw; M-RoPE needs mm_token_type_ids."
    ),
)
