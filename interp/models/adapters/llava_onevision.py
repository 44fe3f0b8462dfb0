"""LLaVA-OneVision (``llava_onevision``): anyres like LLaVA-NeXT, two token layouts.

Which layout an image gets follows ``batch_num_images`` (returned by the image
processor, passed to the forward): an image in a group of one is "patched", images
grouped with others are not. A flat image list (what :func:`interp.inputs.prepare`
passes) makes groups of one, so every image is patched even when several share a
prompt; a nested list (``[[a, b]]``) groups them. Without ``batch_num_images`` the
model patches every image, and so does this adapter.

* Patched: the base tile's ``side x side`` tokens, row-major, then the
  unpadded assembled high-resolution grid row by row, each row followed by one
  ``image_newline`` token. When that grid holds more than ``anyres_max_N`` tiles'
  worth of patches (``config.vision_aspect_ratio``; ratio > 1.1) the model
  bilinearly shrinks it to ``int(rows // ratio) x int(cols // ratio)`` first, and the
  view is that shrunken grid. Views: ``"highres"`` (primary) and ``"base"``.
* Not patched (grouped images): the processor pads the image to a
  centred square, so the model emits the ``side x side`` tokens of that square and a
  single ``image_newline`` token at the end. View: ``"base"``, cropped to the patch
  rows/columns that overlap the image (those over the square padding, like the
  newline, are image tokens with no cell).
"""

from __future__ import annotations

import math

import torch

from ...errors import InputError
from .base import FamilyAdapter, GridView, ImageLayout, row_major, split_by_counts
from .llava_next import anyres_layout, highres_shape, image_sizes_of, tile_side


def max_tiles(config) -> int:
    aspect = getattr(config, "vision_aspect_ratio", None) or "anyres_max_9"
    return int(aspect.removeprefix("anyres_max_"))


def onevision_highres_shape(config, image_size) -> tuple[int, int]:
    """The high-resolution grid after unpadding and the ``anyres_max`` shrink."""
    _, side = tile_side(config)
    rows, cols = highres_shape(config, image_size)
    ratio = math.sqrt(rows * cols / (max_tiles(config) * side**2))
    if ratio > 1.1:
        rows, cols = int(rows // ratio), int(cols // ratio)
    return rows, cols


def square_crop(image_size, side: int) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the base cells that overlap the image once it is
    padded to a centred square and resized to ``side x side`` patches."""
    h, w = int(image_size[0]), int(image_size[1])
    s = max(h, w)

    def span(extent: int) -> tuple[int, int]:
        start = (s - extent) // 2
        return (start * side) // s, math.ceil((start + extent) * side / s)

    r0, r1 = span(h)
    c0, c1 = span(w)
    return r0, r1, c0, c1


class LlavaOnevisionAdapter(FamilyAdapter):
    def _images(self, inputs, row: int, n_images: int) -> tuple[list[int], list[bool]]:
        """Global image indices of batch row ``row`` and whether each is patched.

        The model expands ``batch_num_images`` to one flag per image (patched iff its
        group holds one image). The processor groups a flat image list as one image per
        group even when all go to one prompt, so the groups only give the rows when
        there is one group per row.
        """
        counts = inputs.get("batch_num_images")
        if counts is None:
            first, count = self.images_in_row(inputs, row, n_images)
            return list(range(first, first + count)), [True] * count
        counts = [int(n) for n in torch.as_tensor(counts).reshape(-1).tolist()]
        if sum(counts) != n_images:
            raise InputError(
                f"{self.name}: batch_num_images {counts} does not add up to the {n_images} images "
                "of image_sizes; pass the processor output unchanged"
            )
        patched = [n == 1 for n in counts for _ in range(n)]
        n_rows = torch.as_tensor(inputs["input_ids"]).shape[0]
        if len(counts) == n_rows:
            first, count = sum(counts[:row]), counts[row]
        else:
            first, count = self.images_in_row(inputs, row, n_images)
        return list(range(first, first + count)), patched[first : first + count]

    def image_layouts(self, inputs, config, row=0):
        sizes = image_sizes_of(inputs, self.name)
        _, side = tile_side(config)
        indices, patched = self._images(inputs, row, len(sizes))
        shapes = []
        for index, is_patched in zip(indices, patched):
            size = tuple(sizes[index].tolist())
            if is_patched:
                rows, cols = onevision_highres_shape(config, size)
                shapes.append((side * side + rows * (cols + 1), rows, cols))
            else:
                shapes.append((side * side + 1, None, None))
        runs = split_by_counts(self.image_positions(inputs, config, row), [s[0] for s in shapes], self.name)
        layouts = []
        for index, run, (_, rows, cols) in zip(indices, runs, shapes):
            if rows is not None:
                layouts.append(anyres_layout(index, run, side, rows, cols))
                continue
            r0, r1, c0, c1 = square_crop(tuple(sizes[index].tolist()), side)
            base = row_major(run[: side * side], side, side, "base").positions[r0:r1, c0:c1]
            layouts.append(ImageLayout(index, run, (GridView("base", base.clone()),)))
        return layouts


ADAPTER = LlavaOnevisionAdapter(
    name="LLaVA-OneVision",
    model_types=("llava_onevision",),
    required_inputs=("input_ids", "pixel_values", "image_sizes"),
    notes=(
        "LLaVA-OneVision: image in a batch_num_images group of one = base grid + unpadded "
        "anyres grid with a newline per row (shrunk past anyres_max_N); grouped images = "
        "padded-square base grid + one trailing newline each."
    ),
)
