"""Composable interventions that run together in one nnsight pass."""

from .ablate import ImageTokenEdit, MeanAblateImageTokens, NoiseAblateImageTokens, ScaleImageTokens
from .base import Intervention, StepContext
from .contrastive import ContrastiveMask
from .knockout import AttentionKnockout
from .plan import Plan, RunResult
from .record import RecordAttention, RecordResidual

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
    "RunResult",
    "ScaleImageTokens",
    "StepContext",
]
