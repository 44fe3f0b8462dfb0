"""InternVL (``internvl``): a grid of image tiles plus a thumbnail, each pixel-shuffled.

The processor (GotOcr2 image processor, ``crop_to_patches``) resizes the image to
``cols x rows`` square tiles, the grid whose aspect ratio best matches the image,
and crops them row-major; when there is more than one tile it appends a thumbnail
(the whole image resized to one tile). The prompt is
``<img><IMG_CONTEXT>*(n * tiles)</img>`` per image, with nothing between tiles.

Per tile the tower's patch grid (CLS dropped) goes through the projector's pixel
shuffle, which folds each 2x2 block (``downsample_ratio`` 0.5) into one token. HF's
``pixel_shuffle`` reads the ``(rows, cols)`` grid as ``(width, height)`` and swaps
the axes twice, so the tokens come out row-major over the ``side x side`` blocks
(checked empirically; the transposition shows only in the order of the four
patches inside one token's channels). ``side = tile / patch * downsample_ratio``.

The inputs do not say how the tiles are arranged (the processor drops
``num_patches`` and the original size), so the arrangement is recovered from the
pixels: of every ``rows x cols`` factorisation of the tile count, the one whose
tiles, assembled and shrunk to one tile, best match the thumbnail. (A single tile
has no thumbnail and needs no arrangement.)

Views: ``tiles`` (primary): the tiles assembled into ``(rows * side) x (cols * side)``;
``thumbnail``: the thumbnail's ``side x side`` grid (only with more than one tile).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import InputError
from .base import FamilyAdapter, GridView, ImageLayout, row_major, split_by_counts


def contiguous_runs(positions: torch.Tensor) -> list[torch.Tensor]:
    """Split ascending positions into runs of consecutive positions."""
    if positions.numel() == 0:
        return []
    breaks = (positions[1:] != positions[:-1] + 1).nonzero().flatten() + 1
    return list(torch.tensor_split(positions, breaks.tolist()))


def tile_arrangement(tiles: torch.Tensor, thumbnail: torch.Tensor) -> tuple[int, int]:
    """(rows, cols) of the tile grid whose assembled image best matches the thumbnail.

    ``tiles``: (n, C, T, T) in row-major crop order; ``thumbnail``: (C, T, T).
    Ties (e.g. a blank image) go to the squarest grid, then the wider one.
    """
    n, channels, size = tiles.shape[0], tiles.shape[1], tiles.shape[-1]
    tiles = tiles.float()
    target = thumbnail.float().unsqueeze(0)
    candidates = [(r, n // r) for r in range(1, n + 1) if n % r == 0]
    candidates.sort(key=lambda rc: (abs(rc[0] - rc[1]), rc[0]))
    best, best_err = candidates[0], None
    for rows, cols in candidates:
        mosaic = tiles.reshape(rows, cols, channels, size, size).permute(2, 0, 3, 1, 4)
        mosaic = mosaic.reshape(1, channels, rows * size, cols * size)
        shrunk = F.interpolate(mosaic, size=(size, size), mode="area")
        err = float((shrunk - target).pow(2).mean())
        if best_err is None or err < best_err - 1e-9:
            best, best_err = (rows, cols), err
    return best


class InternVLAdapter(FamilyAdapter):
    def tile_side(self, inputs, config) -> int:
        pixel_values = torch.as_tensor(inputs["pixel_values"])
        height, width = int(pixel_values.shape[-2]), int(pixel_values.shape[-1])
        patch = config.vision_config.patch_size
        patch_h, patch_w = (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
        ratio = float(config.downsample_ratio)
        side_h, side_w = height // patch_h * ratio, width // patch_w * ratio
        if side_h != side_w or side_h != int(side_h):
            raise InputError(
                f"{self.name}: a {height}x{width} tile with {patch_h}x{patch_w} patches does not pixel-shuffle "
                f"by {ratio} into a square grid"
            )
        return int(side_h)

    def image_layouts(self, inputs, config, row=0):
        side = self.tile_side(inputs, config)
        per_tile = side * side
        pixel_values = torch.as_tensor(inputs["pixel_values"])
        ids = torch.as_tensor(inputs["input_ids"])
        image_id = self.image_token_id(config)
        # one <img>...</img> run of image tokens per image; tiles in batch order
        row_runs = [contiguous_runs((ids[r] == image_id).nonzero().flatten()) for r in range(ids.shape[0])]
        n_tiles = int(pixel_values.shape[0]) if pixel_values.dim() == 4 else 0
        everything = torch.cat([run for runs in row_runs for run in runs] or [torch.zeros(0, dtype=torch.long)])
        split_by_counts(everything, [per_tile] * n_tiles, f"{self.name} ({n_tiles} tiles of {per_tile} tokens)")
        counts = [[len(run) // per_tile for run in runs] for runs in row_runs]
        for runs in row_runs:
            for run in runs:
                if len(run) % per_tile:
                    raise InputError(
                        f"{self.name}: an image run of {len(run)} tokens is not a whole number of "
                        f"{per_tile}-token tiles; build the prompt with the model's processor"
                    )
        first_image = sum(len(c) for c in counts[:row])
        first_tile = sum(sum(c) for c in counts[:row])
        runs, counts = row_runs[row], counts[row]
        layouts = []
        tile = first_tile
        for i, (run, n) in enumerate(zip(runs, counts)):
            chunks = run.reshape(n, side, side)
            if n == 1:
                views = (row_major(run, side, side, "tiles"),)
            else:
                rows, cols = tile_arrangement(pixel_values[tile : tile + n - 1], pixel_values[tile + n - 1])
                grid = chunks[:-1].reshape(rows, cols, side, side).permute(0, 2, 1, 3)
                grid = grid.reshape(rows * side, cols * side)
                views = (GridView("tiles", grid.clone()), GridView("thumbnail", chunks[-1].clone()))
            layouts.append(ImageLayout(first_image + i, run, views))
            tile += n
        return layouts


ADAPTER = InternVLAdapter(
    name="InternVL",
    model_types=("internvl",),
    vision_layers_path="model.vision_tower.encoder.layer",
    fallback_prompt="<|im_start|>user\n{image}\n{question}<|im_end|>\n<|im_start|>assistant\n",
    batched_forward=True,
    notes=(
        "InternVL: up to 12 square 448 px tiles + thumbnail, pixel shuffle 0.5 -> 16x16 row-major "
        "tokens per tile; the tile arrangement is matched against the thumbnail (the inputs do not "
        "carry it); primary view: the assembled tiles."
    ),
)
