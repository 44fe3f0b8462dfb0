"""Qwen3-VL (``qwen3_vl``): same token geometry as Qwen2-VL, plus DeepStack.

Each LM token is one ``merge x merge`` block of patches (16 px patches in the real
model), row-major over the merged grid ``(h / merge, w / merge)`` of
``image_grid_thw``. DeepStack adds merged features of intermediate tower blocks to
the same image-token positions after the first ``len(deepstack_visual_indexes)``
decoder layers, so those layers' outputs at image positions are not pure residual
updates; the positions and grid are unchanged.
"""

from __future__ import annotations

from .qwen2_vl import QWEN_FALLBACK_PROMPT, QwenVLAdapter

ADAPTER = QwenVLAdapter(
    name="Qwen3-VL",
    model_types=("qwen3_vl",),
    vision_layers_path="model.visual.blocks",
    projector_path="model.visual.merger",
    required_inputs=("input_ids", "pixel_values", "image_grid_thw", "mm_token_type_ids"),
    appended_token_fields=(("mm_token_type_ids", 0),),  # appended text is text
    fallback_prompt=QWEN_FALLBACK_PROMPT,
    between_layer_edits="DeepStack adds visual features after the first layers",
    batched_forward=True,
    notes=(
        "Qwen3-VL: each LM token a 2x2 merge of 16 px patches, row-major over (h/2, w/2) from "
        "image_grid_thw; DeepStack injects tower features into the image positions after the "
        "first decoder layers (3 in the real models)."
    ),
)
