"""LLaVA-NeXT (``llava_next``): "anyres" tiles, a base image and newline tokens.

Per image the processor tiles a resized, padded copy of the image at the grid
pinpoint that best fits ``image_sizes`` and adds a squashed whole-image "base"
tile. The model then emits, in this order:

1. the base tile's ``side x side`` patch tokens (``side = image_size // patch_size``
   of the vision config), row-major;
2. the high-resolution tiles assembled into one ``(tiles_h*side) x (tiles_w*side)``
   patch grid, with the rows and columns that only cover the padding removed
   ("unpad", computed from ``image_sizes``), row by row, each row followed by one
   ``image_newline`` token.

Views: ``"highres"`` (primary: the unpadded assembled grid, covering the whole
image) and ``"base"``. Newline tokens are image tokens of the image but cover no
cell.
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import InputError
from .base import FamilyAdapter, GridView, ImageLayout, row_major, split_by_counts


def best_resolution(image_size: tuple[int, int], pinpoints: list) -> tuple[int, int]:
    """The (height, width) pinpoint HF picks for an image (``select_best_resolution``)."""
    from transformers.image_processing_utils import select_best_resolution

    height, width = select_best_resolution(tuple(image_size), [list(p) for p in pinpoints])
    return int(height), int(width)


def unpad_bounds(orig_h: int, orig_w: int, cur_h: int, cur_w: int) -> tuple[int, int, int, int]:
    """``(row0, row1, col0, col1)`` of the patch grid that HF's ``unpad_image`` keeps."""
    if orig_w / orig_h > cur_w / cur_h:
        new_h = int(round(orig_h * (cur_w / orig_w), 7))
        pad = (cur_h - new_h) // 2
        return pad, cur_h - pad, 0, cur_w
    new_w = int(round(orig_w * (cur_h / orig_h), 7))
    pad = (cur_w - new_w) // 2
    return 0, cur_h, pad, cur_w - pad


def tile_side(config: Any) -> tuple[int, int]:
    """(tile size in pixels, patches per tile side) from the vision config."""
    vision = config.vision_config
    tile = int(vision.image_size)
    return tile, tile // int(vision.patch_size)


def highres_shape(config: Any, image_size: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of the unpadded assembled high-resolution patch grid."""
    tile, side = tile_side(config)
    best_h, best_w = best_resolution(image_size, config.image_grid_pinpoints)
    cur_h, cur_w = (best_h // tile) * side, (best_w // tile) * side
    r0, r1, c0, c1 = unpad_bounds(int(image_size[0]), int(image_size[1]), cur_h, cur_w)
    return r1 - r0, c1 - c0


def image_sizes_of(inputs, name: str) -> torch.Tensor:
    sizes = inputs.get("image_sizes")
    if sizes is None:
        raise InputError(f"{name} inputs are missing `image_sizes`; pass the full processor output")
    sizes = torch.as_tensor(sizes).reshape(-1, 2)
    return sizes


def anyres_layout(image_index: int, run: torch.Tensor, side: int, rows: int, cols: int) -> ImageLayout:
    """Layout of ``base (side*side) + rows x (cols + newline)`` tokens."""
    base = row_major(run[: side * side], side, side, "base")
    high = run[side * side :].reshape(rows, cols + 1)[:, :cols]
    return ImageLayout(image_index, run, (GridView("highres", high.clone()), base))


class LlavaNextAdapter(FamilyAdapter):
    def tokens_per_image(self, config: Any, image_size: tuple[int, int]) -> tuple[int, int, int]:
        """(total tokens, highres rows, highres cols) of one image."""
        _, side = tile_side(config)
        rows, cols = highres_shape(config, image_size)
        return side * side + rows * (cols + 1), rows, cols

    def image_layouts(self, inputs, config, row=0):
        sizes = image_sizes_of(inputs, self.name)
        first, count = self.images_in_row(inputs, row, len(sizes))
        _, side = tile_side(config)
        shapes = [self.tokens_per_image(config, tuple(sizes[first + i].tolist())) for i in range(count)]
        runs = split_by_counts(self.image_positions(inputs, config, row), [s[0] for s in shapes], self.name)
        return [
            anyres_layout(first + i, run, side, rows, cols)
            for i, (run, (_, rows, cols)) in enumerate(zip(runs, shapes))
        ]


ADAPTER = LlavaNextAdapter(
    name="LLaVA-NeXT",
    model_types=("llava_next",),
    required_inputs=("input_ids", "pixel_values", "image_sizes"),
    notes=(
        "LLaVA-NeXT: base tile grid, then the unpadded anyres grid row by row, each row "
        "ended by an image_newline token (an image token with no cell)."
    ),
)
