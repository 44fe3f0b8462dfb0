"""The image-token lens against HF's own hidden states, final norm and unembedding."""

from __future__ import annotations

import pytest
import torch

from interp.analysis.image_lens import image_token_lens, lens_accuracy, lens_word_grid
from interp.data.synthetic import COLOURS, SHAPES, SyntheticVQA
from interp.errors import InterpError

from ..conftest import tiny_vlm


def test_lens_equals_hf_hidden_states_through_norm_and_head():
    vlm = tiny_vlm("llava")
    samples = SyntheticVQA("test", seed=0)[:1]
    frame = image_token_lens(vlm, samples, k=3, progress=False)
    tokenizer = vlm.processor.tokenizer
    colour_ids = [tokenizer(" " + c, add_special_tokens=False)["input_ids"][0] for c in COLOURS]
    shape_ids = [tokenizer(" " + s, add_special_tokens=False)["input_ids"][0] for s in SHAPES]
    norm = vlm.model.model.language_model.norm
    for sample in samples:
        prepared = vlm.prepare(sample.image, sample.question)
        with torch.no_grad():
            hidden = vlm.model(**prepared.inputs, output_hidden_states=True).hidden_states  # [0] = embeddings
            colour_lab, shape_lab = sample.patch_labels(*prepared.grid.shape)
            for layer in range(vlm.n_layers):
                logits = vlm.model.lm_head(norm(hidden[layer][0]))
                rows = frame[(frame.item == sample.id) & (frame.layer == layer)]
                assert len(rows) == prepared.n_image_tokens
                for row in rows.itertuples():
                    position = int(prepared.grid.positions[row.row, row.col])
                    top = logits[position].topk(3).indices.tolist()
                    assert row.top == [tokenizer.decode([t]).strip().lower() for t in top]
                    assert (row.colour == "background") == (int(colour_lab[row.row, row.col]) == 0)
                    assert (row.shape == "background") == (int(shape_lab[row.row, row.col]) == 0)
                    if row.object:
                        expected = COLOURS[int(logits[position, colour_ids].argmax())] == row.colour
                        assert row.colour_class == expected
                        assert row.shape_class == (SHAPES[int(logits[position, shape_ids].argmax())] == row.shape)
                        assert row.colour_topk == (row.colour in row.top)


def test_lens_in_layer_chunks_equals_one_call():
    """A bound on the logits held (one layer per unembedding call here) reads off the same tokens."""
    vlm = tiny_vlm("llava")
    samples = SyntheticVQA("test", seed=0)[:1]
    whole = image_token_lens(vlm, samples, k=3, progress=False)
    one_layer = whole[whole.layer == 0]
    per_layer_bytes = len(one_layer) * vlm.config.get_text_config().vocab_size * 4
    vlm.counts.clear()
    calls = []
    head = vlm.adapter.resolve(vlm.model, "lm_head")
    handle = head.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape[:2])))
    try:
        chunked = image_token_lens(vlm, samples, k=3, progress=False, max_logits_bytes=per_layer_bytes)
    finally:
        handle.remove()
    # one layer's image tokens per call, every layer (the run's own forward unembeds its last position)
    assert [c for c in calls if c[1] == len(one_layer)] == [(1, len(one_layer))] * vlm.n_layers
    assert chunked.drop(columns=["top"]).equals(whole.drop(columns=["top"]))
    assert chunked.top.tolist() == whole.top.tolist()


def test_lens_accuracy_averages_per_sample_then_bootstraps():
    vlm = tiny_vlm("llava")
    frame = image_token_lens(vlm, SyntheticVQA("test", seed=0)[:3], layers=[0, 2], progress=False)
    accuracy = lens_accuracy(frame, ["colour_class"], n_boot=200)
    cells = frame[frame.object]
    for layer in (0, 2):
        expected = cells[cells.layer == layer].groupby("item").colour_class.mean().mean()
        row = accuracy[accuracy.layer == layer].iloc[0]
        assert abs(row["mean"] - expected) < 1e-12 and row.low <= row["mean"] <= row.high and row.n == 3
    grid = lens_word_grid(frame, frame.item.iloc[0], 2)
    first = frame[(frame.item == frame.item.iloc[0]) & (frame.layer == 2)].iloc[0]
    assert grid[first.row, first.col] == first.top1


def test_lens_without_ground_truth_and_bad_arguments():
    vlm = tiny_vlm("llava")
    sample = SyntheticVQA("test", seed=0)[0]
    frame = image_token_lens(vlm, [(sample.image, sample.question, sample.answer)], layers=[1], progress=False)
    assert "object" not in frame and set(frame.layer) == {1}
    with pytest.raises(InterpError, match="no ground truth"):
        lens_accuracy(frame)
    with pytest.raises(InterpError, match="reads resid_pre or resid_post"):
        image_token_lens(vlm, [sample], site="mlp_out")
