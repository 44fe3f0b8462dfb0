"""Figures of the paper's analyses: one function each, drawing tables the analyses return."""

from .figures import (
    accuracy_vs_rho,
    attention_heatmaps,
    contrastive_example,
    early_output,
    layer_distance,
    masking_curve,
    pre_layer_histogram,
    relevant_vs_noise,
)

__all__ = [
    "accuracy_vs_rho",
    "attention_heatmaps",
    "contrastive_example",
    "early_output",
    "layer_distance",
    "masking_curve",
    "pre_layer_histogram",
    "relevant_vs_noise",
]
