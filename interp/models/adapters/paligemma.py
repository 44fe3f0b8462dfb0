"""PaliGemma (``paligemma``): one SigLIP grid per image, one token per patch.

The processor puts ``image_seq_length`` image tokens per image at the start of the
prompt, then ``<bos>``, the text and ``\\n``. SigLIP has no CLS token, so an image's
tokens are its ``(H / patch) x (W / patch)`` patch grid row-major (view ``"patches"``,
sizes from ``pixel_values``). ``token_type_ids`` (0 on the prefix) give the prefix
bidirectional attention, so they travel with ``input_ids``.
"""

from __future__ import annotations

import torch

from .base import FamilyAdapter, ImageLayout, row_major, split_by_counts


class PaliGemmaAdapter(FamilyAdapter):
    def image_layouts(self, inputs, config, row=0):
        pixel_values = torch.as_tensor(inputs["pixel_values"])
        patch = int(config.vision_config.patch_size)
        rows, cols = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
        first, count = self.images_in_row(inputs, row, pixel_values.shape[0])
        runs = split_by_counts(self.image_positions(inputs, config, row), [rows * cols] * count, self.name)
        return [ImageLayout(first + i, run, (row_major(run, rows, cols, "patches"),)) for i, run in enumerate(runs)]


ADAPTER = PaliGemmaAdapter(
    name="PaliGemma",
    model_types=("paligemma",),
    required_inputs=("input_ids", "pixel_values", "token_type_ids"),  # bidirectional image attention
    appended_token_fields=(("token_type_ids", 1),),  # appended text is the suffix: causal, never read by the prefix
    # The processor adds <bos> after the image tokens and "\n" at the end.
    fallback_prompt="{image}{question}",
    batched_forward=True,
    notes="PaliGemma: SigLIP patch grid (16x16 at 224 px), row-major, image tokens first; prefix-LM mask.",
)
