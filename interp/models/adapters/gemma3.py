"""Gemma 3 (``gemma3``): SigLIP patches average-pooled to ``mm_tokens_per_image`` tokens.

The processor squashes each image to the SigLIP input size and writes
``<start_of_image>`` + ``mm_tokens_per_image`` image tokens + ``<end_of_image>``;
only the image tokens (``image_token_id``) are image positions. The projector pools
the ``P x P`` patch grid (``P = image_size // patch_size``) with a ``k x k`` kernel,
``k = P // sqrt(mm_tokens_per_image)``, and flattens it row-major, so the tokens
of one image form a ``P//k x P//k`` grid (view ``"pooled"``).

Every ``pixel_values`` entry is one run of tokens: with pan-and-scan the original
image and each of its crops are separate layouts, in that order (the processor
output does not say which crops belong to which image).

``token_type_ids`` (1 on image tokens) make image tokens attend to each other
bidirectionally, so they travel with ``input_ids``.
"""

from __future__ import annotations

import torch

from .base import FamilyAdapter, ImageLayout, row_major, split_by_counts


def pool_kernel(config) -> int:
    """Side of the projector's average-pooling kernel, in patches."""
    vision = config.vision_config
    patches = int(vision.image_size) // int(vision.patch_size)
    return patches // int(int(config.mm_tokens_per_image) ** 0.5)


class Gemma3Adapter(FamilyAdapter):
    def image_layouts(self, inputs, config, row=0):
        pixel_values = torch.as_tensor(inputs["pixel_values"])
        patch = int(config.vision_config.patch_size)
        kernel = pool_kernel(config)
        rows = pixel_values.shape[-2] // patch // kernel
        cols = pixel_values.shape[-1] // patch // kernel
        first, count = self.images_in_row(inputs, row, pixel_values.shape[0])
        runs = split_by_counts(self.image_positions(inputs, config, row), [rows * cols] * count, self.name)
        return [ImageLayout(first + i, run, (row_major(run, rows, cols, "pooled"),)) for i, run in enumerate(runs)]


ADAPTER = Gemma3Adapter(
    name="Gemma 3",
    model_types=("gemma3",),
    mid_norm_name="pre_feedforward_layernorm",
    required_inputs=("input_ids", "pixel_values", "token_type_ids"),  # bidirectional image attention
    appended_token_fields=(("token_type_ids", 0),),  # appended text is text
    fallback_prompt="<start_of_turn>user\n{image}{question}<end_of_turn>\n<start_of_turn>model\n",
    batched_forward=True,
    notes=(
        "Gemma 3: SigLIP grid average-pooled to mm_tokens_per_image (16x16 = 256 at 896 px), "
        "row-major; bidirectional attention among image tokens via token_type_ids."
    ),
)
