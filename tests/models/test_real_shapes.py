"""Real checkpoint shapes, offline (:mod:`interp.models.tiny.real_shapes`).

Geometry: the processors of LLaVA-1.5, LLaVA-NeXT-Mistral, Qwen2-VL and Qwen2.5-VL at their
published settings, on real-sized images; the processor's own token counts and grids equal
interp's and the published numbers. End to end: a random model at the real widths (LM cut to
2 layers, vision tower cut as ``E2E`` says), written to disk, loaded by ``interp.load``, cached
and swept.
"""

from __future__ import annotations

import gc
import math
import shutil

import pytest
import torch

import interp
from interp.analysis.items import Item
from interp.inputs import prepare
from interp.models.adapters import adapter_for
from interp.models.tiny.real_shapes import (
    LLAVA_1_5,
    LLAVA_NEXT_MISTRAL,
    QWEN2_5_VL,
    QWEN2_VL,
    REAL_CHECKPOINTS,
    real_config,
    save_real,
)

from ..conftest import make_image

QUESTION = "What is in the picture?"

# -- published numbers ---------------------------------------------------------------

#: (width, height) of the geometry test's images
SIZES = ((640, 480), (1920, 1080))

#: image tokens and primary grid (rows, cols) per (checkpoint, size). LLaVA-NeXT: 576 base
#: tokens + the unpadded 2x2-tile grid, one newline token per row (36 x (48 + 1) = 1764 at
#: 640x480, 28 x (48 + 1) = 1372 at 1920x1080); Qwen: 14 px patches merged 2x2 after the
#: smart resize to multiples of 28 px (476x644 -> 17x23, 1092x1932 -> 39x69).
PUBLISHED_GEOMETRY = {
    (LLAVA_1_5, (640, 480)): (576, (24, 24)),
    (LLAVA_1_5, (1920, 1080)): (576, (24, 24)),
    (LLAVA_NEXT_MISTRAL, (640, 480)): (2340, (36, 48)),
    (LLAVA_NEXT_MISTRAL, (1920, 1080)): (1948, (28, 48)),
    (QWEN2_VL, (640, 480)): (391, (17, 23)),
    (QWEN2_VL, (1920, 1080)): (2691, (39, 69)),
    (QWEN2_5_VL, (640, 480)): (391, (17, 23)),
    (QWEN2_5_VL, (1920, 1080)): (2691, (39, 69)),
}

#: the LM of each checkpoint: (d_model, heads, kv heads, head_dim, d_mlp, vocab, rope_theta)
PUBLISHED_LM = {
    LLAVA_1_5: (4096, 32, 32, 128, 11008, 32064, 10000.0),
    LLAVA_NEXT_MISTRAL: (4096, 32, 8, 128, 14336, 32064, 1e6),
    QWEN2_VL: (3584, 28, 4, 128, 18944, 152064, 1e6),
    QWEN2_5_VL: (3584, 28, 4, 128, 18944, 152064, 1e6),
}

#: the vision tower: (width, depth, heads, MLP width)
PUBLISHED_VISION = {
    LLAVA_1_5: (1024, 24, 16, 4096),
    LLAVA_NEXT_MISTRAL: (1024, 24, 16, 4096),
    QWEN2_VL: (1280, 32, 16, 5120),
    QWEN2_5_VL: (1280, 32, 16, 3420),
}


def short(checkpoint: str) -> str:
    return checkpoint.split("/")[-1]


def vision_shape(config) -> tuple[int, int, int, int]:
    vision = config.vision_config
    if config.model_type == "qwen2_vl":
        return vision.embed_dim, vision.depth, vision.num_heads, vision.embed_dim * vision.mlp_ratio
    if config.model_type == "qwen2_5_vl":
        return vision.hidden_size, vision.depth, vision.num_heads, vision.intermediate_size
    return vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.intermediate_size


def lm_shape(config) -> tuple:
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return (
        text.hidden_size,
        text.num_attention_heads,
        text.num_key_value_heads,
        head_dim,
        text.intermediate_size,
        text.vocab_size,
        text.rope_parameters["rope_theta"],
    )


@pytest.mark.parametrize("checkpoint", REAL_CHECKPOINTS, ids=short)
def test_published_settings(checkpoint):
    config, processor = real_config(checkpoint)
    assert lm_shape(config) == PUBLISHED_LM[checkpoint]
    assert config.get_text_config().num_hidden_layers == 2
    assert vision_shape(config) == PUBLISHED_VISION[checkpoint]
    image_processor = processor.image_processor
    assert list(image_processor.image_mean) == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert list(image_processor.image_std) == pytest.approx([0.26862954, 0.26130258, 0.27577711])
    if checkpoint.startswith("Qwen/"):
        vision = config.vision_config
        assert config.get_text_config().rope_parameters["mrope_section"] == [16, 24, 24]
        assert image_processor.size["shortest_edge"] == 3136 and image_processor.size["longest_edge"] == 12845056
        assert (image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size) == (
            14,
            2,
            2,
        )
        assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (14, 2, 2)
        if checkpoint == QWEN2_5_VL:
            assert vision.out_hidden_size == 3584 and vision.window_size == 112
            assert list(vision.fullatt_block_indexes) == [7, 15, 23, 31]
        else:
            assert vision.hidden_size == 3584  # the merger's output
    else:
        assert (config.vision_config.image_size, config.vision_config.patch_size) == (336, 14)
        assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-2, "default")
        assert image_processor.size["shortest_edge"] == 336
        assert (image_processor.crop_size["height"], image_processor.crop_size["width"]) == (336, 336)
        assert (processor.patch_size, processor.num_additional_image_tokens) == (14, 1)
        if checkpoint == LLAVA_NEXT_MISTRAL:
            pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
            assert config.image_grid_pinpoints == pinpoints
            assert [list(p) for p in image_processor.image_grid_pinpoints] == pinpoints
    # the byte tokenizer fits in the real vocabulary, whose size the embeddings keep
    assert len(processor.tokenizer) < config.get_text_config().vocab_size


def test_vision_depth_cut_keeps_the_rest():
    config, _ = real_config(QWEN2_5_VL, text_layers=3, vision_layers=16)
    assert config.get_text_config().num_hidden_layers == 3
    assert config.vision_config.depth == 16 and list(config.vision_config.fullatt_block_indexes) == [7, 15]
    assert lm_shape(config) == PUBLISHED_LM[QWEN2_5_VL]
    with pytest.raises(interp.errors.UnsupportedModelError, match="available"):
        real_config("llava-hf/llava-1.5-13b-hf")


# -- geometry: the processor's own output vs interp vs the published numbers ---------------


def processor_cells(config, processor, inputs, positions: torch.Tensor) -> tuple[tuple[int, int], torch.Tensor]:
    """The primary grid's shape and each image token's ``(row, col)`` on it (``(-1, -1)``: a
    token on no cell), from the processor's output and HF's own model code, not interp's."""
    n = positions.numel()
    order = torch.arange(n)
    if config.model_type in ("qwen2_vl", "qwen2_5_vl"):
        (t, h, w) = inputs["image_grid_thw"][0].tolist()
        merge = config.vision_config.spatial_merge_size
        rows, cols = h // merge, w // merge
        assert t == 1 and rows * cols == n
        return (rows, cols), torch.stack([order // cols, order % cols], dim=1)
    side = config.vision_config.image_size // config.vision_config.patch_size
    if config.model_type == "llava":
        assert tuple(inputs["pixel_values"].shape[-2:]) == (config.vision_config.image_size,) * 2
        return (side, side), torch.stack([order // side, order % side], dim=1)
    # LLaVA-NeXT: HF's pack_image_features lays the tiles out, unpads them, then ends every row
    # with the newline token, after the base tile's side x side tokens
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

    size = inputs["image_sizes"][0].tolist()
    tiles_h, tiles_w = get_anyres_image_grid_shape(size, config.image_grid_pinpoints, config.vision_config.image_size)
    rows, cols = unpad_image(torch.zeros(1, tiles_h * side, tiles_w * side), size).shape[1:]
    assert side * side + rows * (cols + 1) == n
    assert (
        n == processor._get_number_of_features(*size, *(2 * [config.vision_config.image_size])) - 1
    )  # the default strategy drops CLS
    high = order[side * side :] - side * side
    row, col = high // (cols + 1), high % (cols + 1)
    newline = col == cols
    cells = torch.full((n, 2), -1)
    cells[side * side :] = torch.where(newline[:, None], -1, torch.stack([row, col], dim=1))
    return (rows, cols), cells


@pytest.fixture(scope="module")
def configs():
    return {checkpoint: real_config(checkpoint) for checkpoint in REAL_CHECKPOINTS}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("checkpoint", REAL_CHECKPOINTS, ids=short)
def test_geometry_matches_the_processor_and_the_published_numbers(configs, checkpoint, size):
    config, processor = configs[checkpoint]
    adapter = adapter_for(config)
    width, height = size
    prepared = prepare(processor, adapter, config, make_image(height, width, seed=width), QUESTION)
    ids = prepared.input_ids[0]
    positions = (ids == adapter.image_token_id(config)).nonzero().flatten()
    grid, cells = processor_cells(config, processor, prepared.inputs, positions)
    count, published_grid = PUBLISHED_GEOMETRY[(checkpoint, size)]

    assert positions.numel() == prepared.n_image_tokens == count
    assert torch.equal(prepared.image_positions, positions)
    assert grid == prepared.grid.shape == published_grid
    assert torch.equal(prepared.grid.cells_of(positions), cells)
    # every cell is covered by exactly one image token
    assert (prepared.grid.positions >= 0).all() and prepared.grid.positions.unique().numel() == math.prod(grid)
    if checkpoint == LLAVA_NEXT_MISTRAL:
        base = prepared.layouts[0].view("base")
        assert base.shape == (24, 24) and torch.equal(base.positions.flatten(), positions[:576])


# -- end to end: a random model at the real widths, from disk ---------------------------

#: per checkpoint: the vision blocks the written model keeps, the (height, width) of the image,
#: and the dtype the forwards run in. The vision tower is cut (the LM keeps its real width): a
#: full-depth tower adds minutes of CPU time per forward and no shape the cut one lacks;
#: Qwen2.5-VL keeps 8 blocks so that one full-attention block (7) stays next to the windowed
#: ones. The images are about the smallest that still tile (LLaVA-NeXT: 1x2 tiles, unpadded to
#: 24x4) or span two attention windows (Qwen: a 2x5 merged grid; windows are 4x4), and the
#: question is short: every token costs ~0.2 s at these widths. LLaVA-1.5/NeXT run their
#: forwards in float32: their sequences are >= 577 tokens and this CPU (AVX2, no bfloat16 units)
#: multiplies bfloat16 ~6x slower than float32 (one bfloat16 forward of LLaVA-1.5: ~100 s). The
#: Qwen models run in bfloat16 (in float32 they would take 6.5 GB). Every checkpoint is also
#: loaded in bfloat16, as written, and its weights' shapes checked.
E2E = {
    LLAVA_1_5: dict(vision_layers=1, image=(64, 64), dtype="float32"),
    LLAVA_NEXT_MISTRAL: dict(vision_layers=1, image=(336, 56), dtype="float32"),
    QWEN2_VL: dict(vision_layers=1, image=(56, 140), dtype="bfloat16"),
    QWEN2_5_VL: dict(vision_layers=8, image=(56, 140), dtype="bfloat16"),
}
E2E_QUESTION = "Colour?"

HOOKS = ("vision.hook_projected", "blocks.0.attn.hook_k", "blocks.1.attn.hook_z", "blocks.1.hook_resid_post")


@pytest.fixture(scope="module", params=REAL_CHECKPOINTS, ids=short)
def written(request, tmp_path_factory):
    """``(checkpoint, directory)`` of a written bfloat16 model; one at a time, removed after."""
    checkpoint = request.param
    directory = tmp_path_factory.mktemp(short(checkpoint))
    save_real(checkpoint, directory, vision_layers=E2E[checkpoint]["vision_layers"])
    gc.collect()
    yield checkpoint, directory
    gc.collect()
    shutil.rmtree(directory, ignore_errors=True)


def check_weights(vlm, checkpoint: str) -> None:
    d_model, heads, kv_heads, head_dim, d_mlp, vocab, _ = PUBLISHED_LM[checkpoint]
    model = vlm.model
    assert vlm.dtype == torch.bfloat16 and {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert vlm.n_layers == 2 and vlm.n_vision_layers == E2E[checkpoint]["vision_layers"]
    assert tuple(vlm.adapter.resolve(model, "embed").weight.shape) == (vocab, d_model)
    assert tuple(vlm.adapter.resolve(model, "lm_head").weight.shape) == (vocab, d_model)
    layer = vlm.adapter.resolve(model, "layers")[1]
    attn = getattr(layer, vlm.adapter.attn_name)
    assert tuple(attn.q_proj.weight.shape) == (heads * head_dim, d_model)
    assert tuple(attn.k_proj.weight.shape) == (kv_heads * head_dim, d_model)
    assert tuple(getattr(layer, vlm.adapter.mlp_name).up_proj.weight.shape) == (d_mlp, d_model)


def test_end_to_end_at_real_width(written):
    checkpoint, directory = written
    spec = E2E[checkpoint]
    d_model, heads, kv_heads, head_dim, _, vocab, _ = PUBLISHED_LM[checkpoint]

    vlm = interp.load(str(directory), dtype="bfloat16")
    check_weights(vlm, checkpoint)
    if spec["dtype"] != "bfloat16":
        del vlm
        gc.collect()
        vlm = interp.load(str(directory), dtype=spec["dtype"])
    assert vlm.dtype == getattr(torch, spec["dtype"])

    image = make_image(*spec["image"])
    sample = vlm.prepare(image, E2E_QUESTION)
    seq = sample.seq_len
    logits, cache = vlm.run_with_cache(sample, names_filter=list(HOOKS))
    assert tuple(logits.shape) == (1, seq, vocab) and torch.isfinite(logits).all()
    assert tuple(cache["blocks.0.attn.hook_k"].shape) == (1, seq, kv_heads, head_dim)
    assert tuple(cache["blocks.1.attn.hook_z"].shape) == (1, seq, heads, head_dim)
    assert tuple(cache["blocks.1.hook_resid_post"].shape) == (1, seq, d_model)
    assert cache["vision.hook_projected"].shape[-1] == d_model
    del logits, cache

    item = Item(id="real", image=image, question=E2E_QUESTION, answers=("red",))
    # window only sizes the windowed variants, but the sweep checks it against the 2 layers
    sweep = interp.analysis.masking_sweep(vlm, [item], layers="all", variants=("single",), window=1, progress=False)
    single = sweep[sweep.variant == "single"]
    assert sorted(single.layer) == list(range(vlm.n_layers))
    assert len(sweep[sweep.variant == "baseline"]) == 1
    assert torch.isfinite(torch.tensor(sweep.logprob.values)).all()
    # scaling the image tokens down before layer 0 moves the answer's log-probability
    baseline = float(sweep[sweep.variant == "baseline"].logprob.iloc[0])
    assert abs(float(single[single.layer == 0].logprob.iloc[0]) - baseline) > 1e-3


def test_reproduce_every_section_at_real_width(tmp_path):
    """``reproduce`` with every section (sweep, attention, logit lens, contrastive, patching, image-token
    lens) on LLaVA-1.5's real widths: 3 LM layers (the fewest the contrastive method can use), one
    vision layer, float32 (bfloat16 matrix products are many times slower on this CPU), one
    question and one counterfactual pair, no per-cell maps (576 cells x 4 layers). The process stays
    under :data:`MEMORY_CEILING` of resident memory."""
    from interp.analysis.reproduce import ReproduceConfig, reproduce
    from interp.data.synthetic import SyntheticVQA
    from interp.models.tiny.real_shapes import build_real

    model, processor = build_real(LLAVA_1_5, text_layers=3, vision_layers=1, dtype=torch.float32)
    vlm = interp.load(model, processor)
    data = SyntheticVQA("test", image_size=vlm.scene_size)
    config = ReproduceConfig(patching_pairs=1, lens_samples=1, patching_cell_pairs=0, n_boot=100, progress=False)
    report = reproduce(vlm, data, tmp_path / "run", limit=1, config=config)
    assert report["n_samples"] == 1 and vlm.n_layers == 3
    assert {"masking", "contrastive", "patching", "image_lens"} <= set(report)
    assert report["review_layer"]["layer"] in (1, 2) and report["contrastive"]["comparison"]
    assert report["patching"]["n_pairs"] == 1
    for name in ("masking_sweep.csv", "patching_sweep.csv", "image_lens.csv", "contrastive.csv", "report.md"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    assert (tmp_path / "run" / "rows" / "patching.settings.json").exists()
    del vlm, model
    gc.collect()
    assert peak_resident_bytes() < MEMORY_CEILING


#: the most resident memory a worker running this module may reach (the largest model here, LLaVA-NeXT's
#: real widths at 2 layers in bfloat16, and this reproduce run in float32, each held alone)
MEMORY_CEILING = 8 * 2**30


def peak_resident_bytes() -> int:
    """This process's peak resident memory so far (Linux reports kilobytes)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
