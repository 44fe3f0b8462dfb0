"""Idefics3 (``idefics3``): image tiles plus a global image, each pixel-shuffled.

The processor resizes an image to multiples of the tile size and cuts it into
``rows x cols`` square tiles, row-major, then appends the whole image resized to one
tile (the global image). Each tile goes through the vision tower on its own; the
connector's pixel shuffle folds every ``scale_factor x scale_factor`` block of
patches into one LM token, and the tokens of a tile come out row-major over its
``side x side`` grid of blocks (checked empirically: plain row-major, no
transposition), ``side = tile / patch / scale_factor``.

The prompt spells the structure out::

    <fake><row_1_col_1><image>*n <fake><row_1_col_2><image>*n \\n
    <fake><row_2_col_1><image>*n ...                          \\n
    \\n<fake><global-img><image>*n <fake>

and an image that was not split is only ``<fake><global-img><image>*n<fake>``.
The processor does not return the rows/cols, so they are read off that structure:
each tile's run of ``n`` image tokens (``n`` from the pixel_values tile size and the
config) is preceded by a tag token (``<row_r_col_c>`` or ``<global-img>``); the
tag of the last run of a batch row is the global tag, which closes every image; a new
tile row starts where the text between two runs does not begin with the
``<fake_token_around_image>`` that precedes every tag.

Views: ``tiles`` (primary when the image was split): the tiles assembled into a
``(rows * side) x (cols * side)`` grid; ``global``: the global image's
``side x side`` grid (primary when the image was not split).
"""

from __future__ import annotations

import torch

from ...errors import InputError
from .base import FamilyAdapter, GridView, ImageLayout, row_major, split_by_counts


class Idefics3Adapter(FamilyAdapter):
    """Shared by Idefics3 and SmolVLM."""

    def tile_side(self, inputs, config) -> int:
        """LM tokens per tile side, from the tile size in pixel_values and the config."""
        pixel_values = torch.as_tensor(inputs["pixel_values"])
        height, width = int(pixel_values.shape[-2]), int(pixel_values.shape[-1])
        if height != width:
            raise InputError(f"{self.name}: tiles must be square (the connector assumes it), got {height}x{width}")
        patch = int(config.vision_config.patch_size)
        scale = int(config.scale_factor)
        if (height // patch) % scale:
            raise InputError(
                f"{self.name}: a tile of {height // patch} patches per side does not fold by scale_factor {scale}"
            )
        return height // patch // scale

    def real_tiles(self, inputs, row: int) -> int:
        """Tiles of batch row ``row`` that are not padding (padding tiles are all zeros, as the model checks)."""
        pixel_values = torch.as_tensor(inputs["pixel_values"])
        if pixel_values.dim() == 4:
            pixel_values = pixel_values.unsqueeze(0)
        return int(pixel_values[row].flatten(1).ne(0).any(-1).sum())

    def row_structure(self, inputs, config, row: int):
        """Per image of row ``row``: (tile rows of runs, global run)."""
        side = self.tile_side(inputs, config)
        per_tile = side * side
        ids = torch.as_tensor(inputs["input_ids"])[row]
        image_id = self.image_token_id(config)
        n_tiles = self.real_tiles(inputs, row)
        runs = split_by_counts(
            self.image_positions(inputs, config, row),
            [per_tile] * n_tiles,
            f"{self.name} ({n_tiles} tiles of {per_tile} tokens in batch row {row})",
        )
        for run in runs:
            if int(run[-1] - run[0]) != per_tile - 1 or run[0] < 2 or int(ids[run[0] - 1]) == image_id:
                raise InputError(
                    f"{self.name}: image tokens are not in tagged runs of {per_tile} per tile; "
                    "build the prompt with the model's processor"
                )
        if not runs:
            return side, []
        tags = [int(ids[run[0] - 1]) for run in runs]
        global_tag = tags[-1]
        images, tiles = [], []
        for run, tag in zip(runs, tags):
            if tag != global_tag:
                tiles.append(run)
                continue
            images.append((self.tile_rows(ids, tiles), run))
            tiles = []
        return side, images

    def tile_rows(self, ids: torch.Tensor, tiles: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        if not tiles:
            return []
        fake = int(ids[tiles[0][0] - 2])
        rows = [[tiles[0]]]
        for prev, run in zip(tiles, tiles[1:]):
            if int(ids[prev[-1] + 1]) == fake:
                rows[-1].append(run)
            else:
                rows.append([run])
        if len({len(r) for r in rows}) != 1:
            raise InputError(
                f"{self.name}: tile rows of unequal length ({[len(r) for r in rows]}); "
                "build the prompt with the model's processor"
            )
        return rows

    def image_layouts(self, inputs, config, row=0):
        first = sum(len(self.row_structure(inputs, config, r)[1]) for r in range(row))
        side, images = self.row_structure(inputs, config, row)
        layouts = []
        for i, (tile_rows, global_run) in enumerate(images):
            global_view = row_major(global_run, side, side, "global")
            views = (global_view,)
            positions = global_run
            if tile_rows:
                grid = torch.stack([torch.stack([t.reshape(side, side) for t in r], 0) for r in tile_rows], 0)
                # (tile rows, tile cols, side, side) -> (tile rows * side, tile cols * side)
                n_rows, n_cols = grid.shape[:2]
                grid = grid.permute(0, 2, 1, 3).reshape(n_rows * side, n_cols * side)
                views = (GridView("tiles", grid.clone()), global_view)
                positions = torch.cat([t for r in tile_rows for t in r] + [global_run])
            layouts.append(ImageLayout(first + i, positions, views))
        return layouts


ADAPTER = Idefics3Adapter(
    name="Idefics3",
    model_types=("idefics3",),
    vision_layers_path="model.vision_model.encoder.layers",
    projector_path="model.connector",
    layers_path="model.text_model.layers",
    final_norm_path="model.text_model.norm",
    embed_path="model.text_model.embed_tokens",
    fallback_prompt="User:{image}{question}<end_of_utterance>\nAssistant:",
    notes=(
        "Idefics3: image split into square tiles (364 px) + a global image; pixel shuffle (scale 2) "
        "makes each tile 13x13 row-major tokens; primary view: the assembled tiles."
    ),
)
