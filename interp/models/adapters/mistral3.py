"""Mistral-3 (``mistral3``): Pixtral tower, 2x2 spatial merge, [IMG_BREAK] row ends.

``image_sizes`` holds each image's processed (resized) size; one image token covers
``patch_size * spatial_merge_size`` pixels each way, so an image is a
``(h // unit) x (w // unit)`` grid. The merger unfolds the patch grid row-major, and
the processor writes the rows in order, ``[IMG]`` x cols then ``[IMG_BREAK]``, the last
row ending in ``[IMG_END]`` instead. Only ``[IMG]`` (the config's image token) receives
image features: the break/end tokens are ordinary text tokens, so they are not in the
image's positions. One view, ``"patches"``, covering every cell.
"""

from __future__ import annotations

from .base import FamilyAdapter, ImageLayout, row_major, split_by_counts
from .llava_next import image_sizes_of


class Mistral3Adapter(FamilyAdapter):
    def grid_shape(self, config, image_size) -> tuple[int, int]:
        unit = int(config.vision_config.patch_size) * int(config.spatial_merge_size)
        return int(image_size[0]) // unit, int(image_size[1]) // unit

    def image_layouts(self, inputs, config, row=0):
        sizes = image_sizes_of(inputs, self.name)
        first, count = self.images_in_row(inputs, row, len(sizes))
        shapes = [self.grid_shape(config, sizes[first + i].tolist()) for i in range(count)]
        runs = split_by_counts(self.image_positions(inputs, config, row), [r * c for r, c in shapes], self.name)
        return [
            ImageLayout(first + i, run, (row_major(run, rows, cols, "patches"),))
            for i, (run, (rows, cols)) in enumerate(zip(runs, shapes))
        ]


ADAPTER = Mistral3Adapter(
    name="Mistral-3",
    model_types=("mistral3",),
    vision_layers_path="model.vision_tower.transformer.layers",
    required_inputs=("input_ids", "pixel_values", "image_sizes"),
    fallback_prompt="[INST]{image}{question}[/INST]",
    notes=(
        "Mistral-3: Pixtral patches merged 2x2; [IMG] tokens row-major, rows separated by "
        "[IMG_BREAK] and closed by [IMG_END] (text tokens, not image positions)."
    ),
)
