"""Composable interventions that run together in one nnsight pass."""

from .ablate import ImageTokenEdit, MeanAblateImageTokens, NoiseAblateImageTokens, ScaleImageTokens
from .base import Intervention, StepContext
from .contrastive import ContrastiveMask
from .knockout import AttentionKnockout
from .patch import ImageCells, PatchActivations, RecordSource
from .plan import Plan, RunResult
from .record import RecordAttention, RecordResidual

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
    "RunResult",
    "ScaleImageTokens",
    "StepContext",
]
