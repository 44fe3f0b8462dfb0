"""interp: where, inside a vision-language model, the image meets the text.

Load a model, prepare inputs, run composable interventions in one nnsight pass::

    import interp
    vlm = interp.load("tiny:llava")            # or "llava-hf/llava-1.5-7b-hf"
    sample = vlm.prepare("cat.png", "What colour is the cat?")
    result = vlm.run(sample, interp.RecordAttention(layers="all"),
                     interp.ScaleImageTokens(layers=[2], scale=1e-9), generate=True)
"""

from .errors import InterpError
from .hooks import all_hook_names, parse_hook_name
from .inputs import Prepared
from .interventions import (
    AttentionKnockout,
    ContrastiveMask,
    ImageCells,
    MeanAblateImageTokens,
    NoiseAblateImageTokens,
    PatchActivations,
    Plan,
    RecordAttention,
    RecordResidual,
    RunResult,
    ScaleImageTokens,
)
from .models.loading import load
from .models.vlm import VLM

__version__ = "0.1.0"

__all__ = [
    "AttentionKnockout",
    "ContrastiveMask",
    "ImageCells",
    "InterpError",
    "MeanAblateImageTokens",
    "NoiseAblateImageTokens",
    "PatchActivations",
    "Plan",
    "Prepared",
    "RecordAttention",
    "RecordResidual",
    "RunResult",
    "ScaleImageTokens",
    "VLM",
    "all_hook_names",
    "load",
    "parse_hook_name",
]
