"""The declarative description of one HF vision-language family.

An adapter answers, for one family, the questions every analysis asks:

* where the decoder layers, the final norm and the unembedding live;
* which config field holds the image-token id;
* which extra inputs the forward needs besides ``input_ids`` and ``pixel_values``;
* how the image tokens of one image map onto a patch grid (tiles, newline tokens,
  2x2 merges, pixel shuffle...).

Token geometry is computed from the inputs (``input_ids``, ``pixel_values``,
``image_sizes``, ``image_grid_thw``...) and the config, never from constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Mapping, Sequence

import torch

from ...errors import InputError

Inputs = Mapping[str, Any]


@dataclass(frozen=True)
class GridView:
    """One spatial arrangement of an image's tokens.

    ``positions[r, c]`` is the absolute sequence position of the token that covers
    cell ``(r, c)`` of the view, or ``-1`` where no token covers it (e.g. the padding
    that LLaVA-NeXT removes from its high-resolution tiles).
    """

    name: str
    positions: torch.Tensor

    @property
    def rows(self) -> int:
        return int(self.positions.shape[0])

    @property
    def cols(self) -> int:
        return int(self.positions.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    def cells_of(self, positions) -> torch.Tensor:
        """``(n, 2)``: the ``(row, col)`` of the cell each sequence position covers,
        ``(-1, -1)`` for positions on no cell of this view (the one token <-> cell map)."""
        positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        flat = self.positions.reshape(-1)
        match = flat[None, :] == positions[:, None]
        found = match.any(dim=1)
        index = match.long().argmax(dim=1)
        cells = torch.stack([index // self.cols, index % self.cols], dim=1)
        return torch.where(found[:, None], cells, torch.full_like(cells, -1))

    def scatter(self, values, positions) -> torch.Tensor:
        """``[rows, cols]`` float grid with ``values[i]`` at the cell of ``positions[i]``;
        NaN where no given position covers a cell."""
        values = torch.as_tensor(values).reshape(-1).float()
        cells = self.cells_of(positions)
        out = torch.full(self.shape, float("nan"))
        ok = cells[:, 0] >= 0
        out[cells[ok, 0], cells[ok, 1]] = values[ok]
        return out


@dataclass(frozen=True)
class ImageLayout:
    """Where one image's tokens sit in the sequence and on its patch grid(s).

    ``positions`` lists every image-token position of the image, ascending,
    including tokens that belong to no cell (newline tokens, a CLS token, a tile's
    separator). ``views[0]`` is the primary grid: the one analyses and figures use.
    """

    image_index: int
    positions: torch.Tensor
    views: tuple[GridView, ...]

    @property
    def grid(self) -> GridView:
        return self.views[0]

    def view(self, name: str) -> GridView:
        for view in self.views:
            if view.name == name:
                return view
        names = ", ".join(v.name for v in self.views)
        raise KeyError(f"image {self.image_index} has no view {name!r} (views: {names})")


def row_major(positions: torch.Tensor, rows: int, cols: int, name: str = "grid") -> GridView:
    """A view whose cells are ``positions`` in row-major order."""
    positions = torch.as_tensor(positions, dtype=torch.long)
    if positions.numel() != rows * cols:
        raise InputError(f"cannot lay {positions.numel()} image tokens on a {rows}x{cols} grid")
    return GridView(name, positions.reshape(rows, cols).clone())


def split_by_counts(positions: torch.Tensor, counts: Sequence[int], family: str) -> list[torch.Tensor]:
    """Split the ordered image-token positions of one sequence into per-image runs."""
    total = int(sum(counts))
    if total != len(positions):
        raise InputError(
            f"image-token count mismatch for {family}: the text has {len(positions)} image "
            f"tokens but the images need {total} ({', '.join(map(str, counts))} per image); "
            "build the prompt with the model's processor so the placeholders are expanded"
        )
    out, start = [], 0
    for count in counts:
        out.append(positions[start : start + count])
        start += count
    return out


@dataclass(frozen=True)
class FamilyAdapter:
    """Base class: the declarative part. Subclasses implement :meth:`image_layouts`."""

    name: str
    model_types: tuple[str, ...]
    layers_path: str = "model.language_model.layers"
    final_norm_path: str = "model.language_model.norm"
    embed_path: str = "model.language_model.embed_tokens"
    lm_head_path: str = "lm_head"
    attn_name: str = "self_attn"
    mlp_name: str = "mlp"
    #: inside the attention module: the q/k/v/o projections
    q_name: str = "q_proj"
    k_name: str = "k_proj"
    v_name: str = "v_proj"
    o_name: str = "o_proj"
    #: the norm whose input is the residual stream between attention and MLP (hook_resid_mid)
    mid_norm_name: str = "post_attention_layernorm"
    #: the vision tower's blocks and the projector (merger / connector) whose output
    #: replaces the image tokens
    vision_layers_path: str = "model.vision_tower.encoder.layers"
    projector_path: str = "model.multi_modal_projector"
    image_token_fields: tuple[str, ...] = ("image_token_id", "image_token_index")
    required_inputs: tuple[str, ...] = ("input_ids", "pixel_values")
    #: input fields besides ``input_ids`` and ``attention_mask`` that run along the token axis, and
    #: the value a token appended after the prompt gets there (a teacher-forced answer, a decoded token)
    appended_token_fields: tuple[tuple[str, int], ...] = ()
    # Prompt used when the processor carries no chat template; ``{image}`` is
    # replaced by one image placeholder per image.
    fallback_prompt: str = "{image}\n{question}"
    #: why decoder layers cannot be restarted mid-stack (the forward edits the residual
    #: stream between layers outside the layer modules), or "" when they can
    between_layer_edits: str = ""
    #: the processor and model accept several prompts with images as one padded batch
    batched_generation: bool = False
    #: several samples' inputs stack into one right-padded batch (token fields padded, image
    #: tensors concatenated in row order) whose forward computes each row as that sample alone:
    #: clean passes run batched (:mod:`interp.engine.batched`)
    batched_forward: bool = False
    notes: str = ""

    # -- config --------------------------------------------------------------

    def image_token_id(self, config: Any) -> int:
        for name in self.image_token_fields:
            value = getattr(config, name, None)
            if value is not None:
                return int(value)
        raise InputError(
            f"{self.name} config has none of {', '.join(self.image_token_fields)}; "
            "cannot tell which tokens are image tokens"
        )

    def text_config(self, config: Any) -> Any:
        return config.get_text_config() if hasattr(config, "get_text_config") else config

    def n_layers(self, config: Any) -> int:
        return int(self.text_config(config).num_hidden_layers)

    def head_dim(self, config: Any) -> int:
        text = self.text_config(config)
        return int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)

    def max_positions(self, config: Any) -> int | None:
        """The longest sequence the LM was built for (``max_position_embeddings``), None if unstated."""
        value = getattr(self.text_config(config), "max_position_embeddings", None)
        return int(value) if isinstance(value, int) and value > 0 else None

    def kv_heads(self, config: Any) -> int:
        """Key/value heads per decoder layer (grouped-query attention shares them)."""
        text = self.text_config(config)
        return int(getattr(text, "num_key_value_heads", None) or text.num_attention_heads)

    def kv_bytes_per_token(self, config: Any, dtype: Any) -> int:
        """Bytes one token's keys and values take in one decoder layer at ``dtype`` (a torch dtype)."""
        return 2 * self.kv_heads(config) * self.head_dim(config) * dtype.itemsize

    def site_paths(self) -> dict:
        """The module paths and names the hook sites live at (plain strings)."""
        names = (
            "layers_path",
            "final_norm_path",
            "embed_path",
            "vision_layers_path",
            "projector_path",
            "attn_name",
            "mlp_name",
            "q_name",
            "k_name",
            "v_name",
            "o_name",
            "mid_norm_name",
        )
        return {name: getattr(self, name) for name in names}

    def n_vision_layers_in_config(self, config: Any) -> int:
        """Vision-tower blocks from the config alone (no weights): 0 when it does not say."""
        vision = getattr(config, "vision_config", None)
        for field_name in ("num_hidden_layers", "depth", "num_layers"):
            value = getattr(vision, field_name, None)
            if isinstance(value, int):
                return value
        return 0

    def n_vision_layers(self, model: Any) -> int:
        """Blocks in the vision tower (0 if the path does not exist in this model)."""
        try:
            return len(self.resolve(model, "vision_layers"))
        except AttributeError:
            return 0

    def resolve(self, model: Any, part: str) -> Any:
        """The torch module at ``layers``/``final_norm``/``embed``/``lm_head`` of a HF model."""
        path = getattr(self, f"{part}_path")
        module = model
        for attr in path.split("."):
            module = getattr(module, attr)
        return module

    # -- inputs --------------------------------------------------------------

    def check_inputs(self, inputs: Inputs) -> None:
        """Raise one clear line if an input the forward needs is missing."""
        missing = [k for k in self.required_inputs if inputs.get(k) is None]
        if missing:
            need = ", ".join(f"`{k}`" for k in missing)
            raise InputError(
                f"{self.name} inputs are missing {need}; pass the full processor output "
                f"(it needs {', '.join(self.required_inputs)})"
            )

    def image_positions(self, inputs: Inputs, config: Any, row: int = 0) -> torch.Tensor:
        ids = torch.as_tensor(inputs["input_ids"])[row]
        return (ids == self.image_token_id(config)).nonzero().flatten()

    def image_layouts(self, inputs: Inputs, config: Any, row: int = 0) -> list[ImageLayout]:
        """Per image in batch row ``row``: its token positions and patch grid(s)."""
        raise NotImplementedError

    def images_in_row(self, inputs: Inputs, row: int, n_images_total: int) -> tuple[int, int]:
        """(first image index, number of images) belonging to batch row ``row``.

        Families whose processor returns all images of a batch flattened in order
        share this: images are assigned to rows by their count of image runs.
        """
        ids = torch.as_tensor(inputs["input_ids"])
        if ids.shape[0] == 1:
            return 0, n_images_total
        per_row = n_images_total // ids.shape[0]
        if per_row * ids.shape[0] != n_images_total:
            raise InputError(
                f"{self.name}: cannot assign {n_images_total} images to {ids.shape[0]} batch rows "
                "evenly; run rows with different image counts separately"
            )
        return row * per_row, per_row
