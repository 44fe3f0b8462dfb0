"""Turn (image or images, question) into model inputs, image-token positions and grids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import torch
from PIL import Image, UnidentifiedImageError

from .errors import InputError
from .models.adapters.base import FamilyAdapter, ImageLayout

ImageLike = str | Path | Image.Image | Any


@dataclass
class Prepared:
    """Model inputs for one prompt, and where its image tokens are.

    Made by :meth:`interp.VLM.prepare` (or :meth:`interp.VLM.from_inputs` from processor
    outputs you already have).

    Args:
        inputs: the processor output (a dict of tensors for ``model(**inputs)``).
        image_positions: every image-token position in the sequence (batch row 0), ascending.
        layouts: one :class:`ImageLayout` per image.
        prompt: the prompt text the processor was given.
        question_positions: the question's token positions (when it is not found in the
            prompt: the positions after the last image token, the last position excluded).
    """

    inputs: dict
    image_positions: torch.Tensor
    layouts: list[ImageLayout]
    prompt: str
    question_positions: torch.Tensor

    @property
    def input_ids(self) -> torch.Tensor:
        """The token ids ``(batch, seq_len)``."""
        return self.inputs["input_ids"]

    @property
    def seq_len(self) -> int:
        """The prompt's length in tokens."""
        return int(self.input_ids.shape[-1])

    @property
    def n_image_tokens(self) -> int:
        """How many image tokens the prompt holds."""
        return int(self.image_positions.numel())

    @property
    def grid(self):
        """The primary patch grid of the first image."""
        return self.layouts[0].grid


def read_image_file(path: Path, error: type[Exception] = InputError) -> Image.Image:
    """The RGB image at ``path``; otherwise ``error`` with a one-line message naming the file."""
    if not path.is_file():
        raise error(f"image file not found: {path}")
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as failure:
        raise error(f"cannot read image file {path}: {failure.__class__.__name__}") from None


def load_image(image: ImageLike) -> Image.Image:
    """A PIL RGB image from a path, a PIL image or an HxWx3 array; one clear error otherwise."""
    if isinstance(image, (str, Path)):
        from .validate import image_reference

        return read_image_file(Path(image_reference(image)))
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        import numpy as np

        array = np.asarray(image)
    except Exception:  # noqa: BLE001 - anything unconvertible is a bad image
        array = None
    if array is not None and array.ndim == 3 and array.shape[-1] in (3, 4):
        if array.dtype != "uint8":
            array = (array.clip(0, 1) * 255).astype("uint8") if array.max() <= 1.0 else array.astype("uint8")
        return Image.fromarray(array[..., :3])
    raise InputError(f"cannot use {type(image).__name__} as an image; pass a file path, a PIL image or an HxWx3 array")


def chat_messages(question: str, n_images: int) -> list[dict]:
    content = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


def build_prompt(processor: Any, adapter: FamilyAdapter, question: str, n_images: int) -> str:
    """The chat-templated prompt, or the family's fallback format without a template."""
    template = getattr(processor, "chat_template", None) or getattr(
        getattr(processor, "tokenizer", None), "chat_template", None
    )
    if template:
        return processor.apply_chat_template(chat_messages(question, n_images), add_generation_prompt=True)
    placeholder = getattr(processor, "image_token", None) or "<image>"
    return adapter.fallback_prompt.format(image=placeholder * n_images, question=question)


def prepare(
    processor: Any,
    adapter: FamilyAdapter,
    config: Any,
    images: ImageLike | Sequence[ImageLike],
    question: str,
    *,
    prompt: str | None = None,
    dtype: torch.dtype | None = None,
    device: Any = None,
) -> Prepared:
    """Process one prompt with its image(s); validate the image-token geometry."""
    if images is None or (isinstance(images, (list, tuple)) and len(images) == 0):
        raise InputError("no image given; pass at least one image (a path, a PIL image or an array)")
    image_list = list(images) if isinstance(images, (list, tuple)) else [images]
    pil_images = [load_image(image) for image in image_list]
    if not isinstance(question, str) or not question.strip():
        raise InputError("the question must be a non-empty string")
    text = prompt if prompt is not None else build_prompt(processor, adapter, question, len(pil_images))
    try:
        encoded = processor(images=pil_images, text=text, return_tensors="pt")
    except ValueError as error:
        raise InputError(f"the processor rejected the inputs: {str(error).splitlines()[0]}") from None
    # training targets some processors add (PaliGemma's `labels`) are not model inputs here
    inputs = {k: v for k, v in dict(encoded).items() if k != "labels"}
    if dtype is not None and "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    if device is not None:
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    prepared = from_inputs(inputs, adapter, config, prompt=text)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        found = find_subsequence(prepared.input_ids[0], tokenizer(question, add_special_tokens=False)["input_ids"])
        if found is not None:
            prepared.question_positions = found
    return prepared


def find_subsequence(ids: torch.Tensor, pattern: Sequence[int]) -> torch.Tensor | None:
    """Positions of the last occurrence of ``pattern`` in ``ids``, or None."""
    n = len(pattern)
    if n == 0 or n > len(ids):
        return None
    pattern_t = torch.as_tensor(pattern, dtype=ids.dtype)
    windows = ids.unfold(0, n, 1)
    hits = (windows == pattern_t).all(dim=1).nonzero().flatten()
    if hits.numel() == 0:
        return None
    start = int(hits[-1])
    return torch.arange(start, start + n)


def from_inputs(inputs: dict, adapter: FamilyAdapter, config: Any, *, prompt: str = "") -> Prepared:
    """Validate ready-made processor outputs and locate their image tokens."""
    adapter.check_inputs(inputs)
    positions = adapter.image_positions(inputs, config).cpu()
    if positions.numel() == 0:
        raise InputError(
            f"the inputs hold no image tokens (id {adapter.image_token_id(config)}); "
            "build them with the model's processor and at least one image"
        )
    cpu_inputs = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    layouts = adapter.image_layouts(cpu_inputs, config)
    seq_len = int(cpu_inputs["input_ids"].shape[-1])
    limit = adapter.max_positions(config)
    if limit is not None and seq_len > limit:
        raise InputError(
            f"the prompt is {seq_len} tokens and the model takes at most {limit} "
            "(max_position_embeddings): shorten the question or use a smaller image"
        )
    after_images = torch.arange(int(positions.max()) + 1, seq_len - 1)
    return Prepared(
        inputs=inputs, image_positions=positions, layouts=layouts, prompt=prompt, question_positions=after_images
    )
