"""What a dataset can offer the analyses beyond (image, question, answer) items.

The analyses ask a dataset for a capability, never for its type: a dataset class offers
counterfactual pairs by having :meth:`OffersCounterfactuals.counterfactual_pairs`, dense
per-cell labels by having :meth:`OffersCellLabels.labelled_samples`. The synthetic benchmark
(:class:`interp.data.synthetic.SyntheticVQA`) offers both; an evaluation task neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class OffersCounterfactuals(Protocol):
    """A dataset that makes counterfactual pairs (a base and a minimally changed source)."""

    def counterfactual_pairs(self, n: int, changes: Sequence[str], *, seed: int = 0) -> list[Any]:
        """``n`` pairs, the ``changes`` taking turns; each pair is anything
        :func:`interp.analysis.patching.as_pairs` reads (e.g. a ``Counterfactual``)."""
        ...


@runtime_checkable
class OffersCellLabels(Protocol):
    """A dataset whose samples say what each image cell shows (``patch_labels(rows, cols)``)."""

    def labelled_samples(self, n: int | None) -> list[Any]:
        """The first ``n`` samples (all when None), each with ``patch_labels(rows, cols, min_fraction=...)``."""
        ...


__all__ = ["OffersCellLabels", "OffersCounterfactuals"]
