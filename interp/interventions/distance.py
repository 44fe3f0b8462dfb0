"""Distances between attention distributions (torch only, so they also run inside a
trace that is shipped to NDIF).

Inputs are non-negative weights over the same image tokens; each is renormalised to
sum to one. Both distances lie in [0, 1]: Jensen-Shannon divergence in bits, and the
Hellinger distance ``sqrt(1 - sum sqrt(p q))``.
"""

from __future__ import annotations

import torch

_EPS = 1e-12


def normalise(weights: torch.Tensor) -> torch.Tensor:
    weights = weights.float().clamp_min(0)
    return weights / weights.sum(dim=-1, keepdim=True).clamp_min(_EPS)


def jsd(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (base 2) along the last axis."""
    p, q = normalise(p), normalise(q)
    m = 0.5 * (p + q)

    def kl(a, b):
        return torch.where(a > 0, a * (torch.log2(a.clamp_min(_EPS)) - torch.log2(b.clamp_min(_EPS))), 0.0).sum(-1)

    return (0.5 * kl(p, m) + 0.5 * kl(q, m)).clamp(0.0, 1.0)


def hellinger(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Hellinger distance along the last axis."""
    p, q = normalise(p), normalise(q)
    return torch.sqrt((1 - torch.sqrt(p * q).sum(-1)).clamp_min(0.0))


DISTANCES = {"jsd": jsd, "hellinger": hellinger}
