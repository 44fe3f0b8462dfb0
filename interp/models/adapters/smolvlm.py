"""SmolVLM (``smolvlm``): the Idefics3 token structure (tiles + global image, pixel shuffle).

The processor writes the same prompt as Idefics3 (``<fake_token_around_image>``,
``<row_r_col_c>`` and ``<global-img>`` tags, a newline after each tile row) and the
connector uses the same row-major pixel shuffle, so the layout code is Idefics3's:
primary view ``tiles`` (the tiles assembled, ``side x side`` tokens each), plus the
``global`` view; an unsplit image has only ``global``.
"""

from __future__ import annotations

from dataclasses import replace

from .idefics3 import ADAPTER as IDEFICS3

# same module paths and layout code as Idefics3
ADAPTER = replace(
    IDEFICS3,
    name="SmolVLM",
    model_types=("smolvlm",),
    fallback_prompt="<|im_start|>User:{image}{question}<end_of_utterance>\nAssistant:",
    notes=(
        "SmolVLM: Idefics3 layout; 512 px tiles + global image, pixel shuffle (scale 4 in the small "
        "models) to 8x8 row-major tokens per tile; primary view: the assembled tiles."
    ),
)
