"""Datasets: a grounded synthetic VQA benchmark (:mod:`interp.data.synthetic`)."""

from . import synthetic
from .synthetic import *  # noqa: F401,F403 - the public names listed in synthetic.__all__

__all__ = list(synthetic.__all__)
