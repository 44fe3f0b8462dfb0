"""Composable interventions that run together in one nnsight pass."""

from .ablate import ImageTokenEdit, MeanAblateImageTokens, NoiseAblateImageTokens, ScaleImageTokens
from .base import Intervention, StepContext
from .contrastive import ContrastiveMask
from .knockout import AttentionKnockout
from .patch import ImageCells, PatchActivations, RecordSource
from .record import RecordAttention, RecordResidual
from .wcd import ReviewLayerMask, SoftImageMask

__all__ = [
    "ContrastiveMask",
    "AttentionKnockout",
    "ImageTokenEdit",
    "ImageCells",
    "Intervention",
    "MeanAblateImageTokens",
    "NoiseAblateImageTokens",
    "PatchActivations",
    "Plan",
    "RecordAttention",
    "RecordResidual",
    "RecordSource",
    "ReviewLayerMask",
    "RunResult",
    "ScaleImageTokens",
    "SoftImageMask",
    "StepContext",
]


def __getattr__(name: str):
    # Plan and RunResult live in the engine, which imports this package: resolved on first use
    if name in ("Plan", "RunResult"):
        from ..engine import plan

        return getattr(plan, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
