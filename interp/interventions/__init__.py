"""Composable interventions that run together in one nnsight pass."""

from .ablate import ImageTokenEdit, MeanAblateImageTokens, NoiseAblateImageTokens, ScaleImageTokens
from .base import Intervention, StepContext
from .contrastive import ContrastiveMask
from .knockout import AttentionKnockout
from .plan import Plan, RunResult
from .record import RecordAttention, RecordResidual
from .wcd import ReviewLayerMask, SoftImageMask

__all__ = [
    "ContrastiveMask",
    "AttentionKnockout",
    "ImageTokenEdit",
    "Intervention",
    "MeanAblateImageTokens",
    "NoiseAblateImageTokens",
    "Plan",
    "RecordAttention",
    "RecordResidual",
    "ReviewLayerMask",
    "RunResult",
    "ScaleImageTokens",
    "SoftImageMask",
    "StepContext",
]
