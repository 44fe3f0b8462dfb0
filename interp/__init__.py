"""interp: where, inside a vision-language model, the image meets the text.

Load a model, prepare inputs, run composable interventions in one nnsight pass::

    import interp
    vlm = interp.load("tiny:llava")            # or "llava-hf/llava-1.5-7b-hf"
    sample = vlm.prepare("cat.png", "What colour is the cat?")
    result = vlm.run(sample, interp.RecordAttention(layers="all"),
                     interp.ScaleImageTokens(layers=[2], scale=1e-9), generate=True)

The names below are imported on first use (PEP 562), so ``import interp`` and
``interp --help`` stay fast; torch, transformers and nnsight load when a model does.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from .errors import InterpError as InterpError

__version__ = "0.1.0"

#: public name -> the module that defines it
_LAZY = {
    "all_hook_names": ".hooks",
    "parse_hook_name": ".hooks",
    "Prepared": ".inputs",
    "AttentionKnockout": ".interventions",
    "ContrastiveMask": ".interventions",
    "ImageCells": ".interventions",
    "PatchActivations": ".interventions",
    "MeanAblateImageTokens": ".interventions",
    "NoiseAblateImageTokens": ".interventions",
    "Plan": ".interventions",
    "RecordAttention": ".interventions",
    "RecordResidual": ".interventions",
    "RunResult": ".interventions",
    "ScaleImageTokens": ".interventions",
    "ActivationCache": ".cache",
    "load": ".models.loading",
    "VLM": ".models.vlm",
}

__all__ = sorted([*_LAZY, "InterpError"])


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'interp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for type checkers and IDEs: the eager imports
    from .cache import ActivationCache  # noqa: F401
    from .hooks import all_hook_names, parse_hook_name  # noqa: F401
    from .inputs import Prepared  # noqa: F401
    from .interventions import (  # noqa: F401
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
    from .models.loading import load  # noqa: F401
    from .models.vlm import VLM  # noqa: F401
