"""Qwen2.5-VL (``qwen2_5_vl``): same token geometry as Qwen2-VL.

Each LM token is one ``merge x merge`` block of patches, row-major over the merged
grid ``(h / merge, w / merge)`` of ``image_grid_thw``. The tower's window attention
reorders the patches into windows internally but restores the row-major order after
the merger, so the LM sees the same layout as Qwen2-VL.
"""

from __future__ import annotations

from .qwen2_vl import QWEN_FALLBACK_PROMPT, QwenVLAdapter

ADAPTER = QwenVLAdapter(
    name="Qwen2.5-VL",
    model_types=("qwen2_5_vl",),
    vision_layers_path="model.visual.blocks",
    projector_path="model.visual.merger",
    required_inputs=("input_ids", "pixel_values", "image_grid_thw", "mm_token_type_ids"),
    appended_token_fields=(("mm_token_type_ids", 0),),  # appended text is text
    fallback_prompt=QWEN_FALLBACK_PROMPT,
    batched_forward=True,
    notes=(
        "Qwen2.5-VL: windowed ViT, each LM token a 2x2 merge of 14 px patches, row-major over "
        "(h/2, w/2) from image_grid_thw. Without mm_token_type_ids the forward silently falls "
        "back to 1-D positions, so it is required here."
    ),
)
