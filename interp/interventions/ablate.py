"""Edits of the image-token hidden states at the input of chosen decoder layers.

``ScaleImageTokens`` is the paper's masking (multiply by ~0 at the input of a
layer, prefill only); ``MeanAblateImageTokens`` and ``NoiseAblateImageTokens`` are
the usual alternatives. All act on ``blocks.{l}.hook_resid_pre`` at the image
positions, optionally on a subset of the image tokens (indices into the image
tokens, a boolean mask over them, or a callable of the step context, e.g. built
from attention recorded earlier in the same pass).
"""

from __future__ import annotations

from typing import Any

import torch

from ..options import PAPER_MASK_SCALE
from .base import Intervention, StepContext, check_token_subset, image_token_subset


class ImageTokenEdit(Intervention):
    """Base: replace ``h[:, image tokens]`` at ``resid_pre`` of each layer by :meth:`edit`."""

    def __init__(self, layers: Any, tokens: Any = None, every_step: bool = False):
        self.layers = layers
        self.tokens = tokens
        self.every_step = every_step

    def _bind(self, prepared) -> None:
        check_token_subset(self.tokens, prepared.n_image_tokens)
        positions = prepared.image_positions
        self._first_image = int(positions.min()) if positions.numel() else None

    def sites(self):
        return [(layer, "resid_pre") for layer in self.layers]

    def first_row(self, layer, site) -> int | None:
        """The first prefill row this edit can change: the first image token (None: no image tokens)."""
        return self._first_image

    def edit_hidden(self, layer, site, hidden, ctx: StepContext):
        positions = image_token_subset(self.tokens, ctx)
        rows = ctx.local_rows(positions.to(hidden.device), hidden.shape[1])
        if rows.numel() == 0:
            return hidden
        new = hidden.clone()
        new[:, rows] = self.edit(hidden[:, rows], ctx, layer)
        return new

    def edit(self, values: torch.Tensor, ctx: StepContext, layer: int) -> torch.Tensor:
        raise NotImplementedError


class ScaleImageTokens(ImageTokenEdit):
    """Multiply image-token hidden states by ``scale`` at the input of ``layers``.

    The paper's masking: acts on ``blocks.{l}.hook_resid_pre`` at the image positions.

    Args:
        layers: the decoder layers: an int, an iterable of ints or ``"all"``.
        scale: a number (the paper uses :data:`PAPER_MASK_SCALE`; 0 zeroes them), a tensor
            with one factor per selected token, or a callable of the step context
            returning either.
        tokens: a subset of the image tokens (indices into them, a boolean mask over them,
            or a callable of the step context returning either, e.g. built from attention
            recorded earlier in the same pass); None: every image token.
        every_step: also act at every generation step (default: the prefill only).

    Raises:
        InputError: ``scale`` is none of those.

    Example:
        ```python
        mask = interp.ScaleImageTokens(layers=[2], scale=1e-9)
        result = vlm.run(sample, mask, generate=True)
        result.text
        ```
    """

    def __init__(self, layers: Any, scale: Any = PAPER_MASK_SCALE, tokens: Any = None, every_step: bool = False):
        from ..validate import scale as check_scale

        super().__init__(layers, tokens, every_step)
        self.scale = check_scale(scale)

    def edit(self, values, ctx, layer):
        scale = self.scale(ctx) if callable(self.scale) else self.scale
        scale = torch.as_tensor(scale, dtype=values.dtype, device=values.device)
        if scale.ndim == 1:
            scale = scale[None, :, None]
        return values * scale


class MeanAblateImageTokens(ImageTokenEdit):
    """Replace image-token hidden states by their mean over the selected tokens (per
    sequence), or by a given ``mean`` vector, at the input of ``layers``.

    Args:
        layers: the decoder layers: an int, an iterable of ints or ``"all"``.
        mean: a ``d_model`` vector to write instead (e.g. a dataset mean of that layer);
            None: the selected tokens' own mean.
        tokens: a subset of the image tokens (indices into them, a boolean mask over them,
            or a callable of the step context returning either, e.g. built from attention
            recorded earlier in the same pass); None: every image token.
        every_step: also act at every generation step (default: the prefill only).
    """

    def __init__(self, layers: Any, mean: Any = None, tokens: Any = None, every_step: bool = False):
        super().__init__(layers, tokens, every_step)
        self.mean = mean

    def edit(self, values, ctx, layer):
        if self.mean is None:
            mean = values.mean(dim=1, keepdim=True)
        else:
            mean = torch.as_tensor(self.mean, dtype=values.dtype, device=values.device).reshape(1, 1, -1)
        return mean.expand_as(values).clone()


class NoiseAblateImageTokens(ImageTokenEdit):
    """Add Gaussian noise to image-token hidden states (seeded, reproducible) at the
    input of ``layers``.

    Args:
        layers: the decoder layers: an int, an iterable of ints or ``"all"``.
        std: the noise's standard deviation; None: ``noise_scale`` times that of the
            selected hidden states.
        noise_scale: the multiple used without ``std`` (3, as in causal tracing).
        seed: the random seed (the noise also depends on the layer and the step).
        tokens: a subset of the image tokens (indices into them, a boolean mask over them,
            or a callable of the step context returning either, e.g. built from attention
            recorded earlier in the same pass); None: every image token.
        every_step: also act at every generation step (default: the prefill only).
    """

    def __init__(
        self,
        layers: Any,
        std: float | None = None,
        noise_scale: float = 3.0,
        seed: int = 0,
        tokens: Any = None,
        every_step: bool = False,
    ):
        super().__init__(layers, tokens, every_step)
        self.std = std
        self.noise_scale = noise_scale
        self.seed = seed

    def edit(self, values, ctx, layer):
        generator = torch.Generator(device=values.device).manual_seed(self.seed + 1000003 * layer + ctx.step)
        noise = torch.randn(values.shape, generator=generator, device=values.device, dtype=torch.float32)
        std = self.std if self.std is not None else self.noise_scale * float(values.float().std())
        return values + (noise * std).to(values.dtype)
