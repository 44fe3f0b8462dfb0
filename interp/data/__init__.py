"""Datasets: a grounded synthetic VQA benchmark (:mod:`interp.data.synthetic`)."""

from .synthetic import (
    COLOUR_CLASSES,
    COLOUR_RGB,
    COLOURS,
    QUESTION_KINDS,
    SHAPE_CLASSES,
    SHAPES,
    SPLIT_SIZES,
    Sample,
    SyntheticVQA,
    is_correct,
    normalize_answer,
)

__all__ = [
    "COLOURS",
    "COLOUR_CLASSES",
    "COLOUR_RGB",
    "QUESTION_KINDS",
    "SHAPES",
    "SHAPE_CLASSES",
    "SPLIT_SIZES",
    "Sample",
    "SyntheticVQA",
    "is_correct",
    "normalize_answer",
]
