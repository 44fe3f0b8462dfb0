"""Counterfactual pairs of the synthetic benchmark: the same scene with one controlled change."""

from __future__ import annotations

import numpy as np
import pytest

from interp.data.synthetic import (
    CHANGES,
    SyntheticVQA,
    answer_of,
    counterfactual,
    counterfactual_pairs,
    normalize_answer,
)
from interp.errors import InterpError


@pytest.fixture(scope="module")
def data():
    return SyntheticVQA("test", seed=0)


def _pixels(image):
    return np.asarray(image).astype(np.int16)


def test_samples_redraw_exactly_from_their_render_state(data):
    from interp.data.synthetic import _render_scene, _rng_from

    for index in range(10):
        sample = data[index]
        state = sample.render_state
        redrawn = _render_scene(_rng_from(state), sample.objects, state["image_size"], state["clutter"])
        assert np.array_equal(_pixels(redrawn), _pixels(sample.image))
        # and the question's answer follows from the scene by the independent evaluator
        assert answer_of(sample.question, sample.objects, 96)[0] == sample.answer


def test_every_change_keeps_the_scene_and_changes_only_inside_its_boxes(data):
    made = {change: 0 for change in CHANGES}
    for index in range(25):
        sample = data[index]
        for change in CHANGES:
            try:
                pair = counterfactual(sample, change)
            except InterpError:
                continue
            made[change] += 1
            changed = pair.changed
            assert changed.question == sample.question and changed.image.size == sample.image.size
            diff = pair.pixel_mask()
            assert diff.any()
            inside = np.zeros_like(diff)
            for x0, y0, x1, y1 in pair.changed_boxes:
                inside[y0:y1, x0:x1] = True
            assert not (diff & ~inside).any()  # background, clutter and other objects untouched
            assert answer_of(sample.question, changed.objects, 96)[0] == changed.answer
            pairs = {(o["colour"], o["shape"]) for o in changed.objects}
            assert len(pairs) == len(changed.objects)  # still distinct colour-shape pairs
            same = normalize_answer(changed.answer) == normalize_answer(sample.answer)
            if change == "distractor":
                assert same and pair.target not in answer_of(sample.question, sample.objects, 96)[1]
                new = changed.objects[pair.target]
                assert new["colour"] not in sample.question and new["colour"] != sample.answer
            elif change in ("colour", "shape", "remove"):
                assert not same
            if change == "position":
                assert len(pair.changed_boxes) == 2 and pair.changed_boxes[0] != pair.changed_boxes[1]
            if change == "remove":
                assert len(changed.objects) == len(sample.objects) - 1
    assert all(made.values()), made


def test_counterfactuals_are_deterministic_and_the_seed_matters(data):
    sample = data[0]
    a, b = counterfactual(sample, "distractor"), counterfactual(sample, "distractor")
    assert np.array_equal(_pixels(a.changed.image), _pixels(b.changed.image)) and a.description == b.description
    seeds = {counterfactual(sample, "distractor", seed=s).description for s in range(6)}
    assert len(seeds) > 1


def test_changed_mask_is_exact_on_any_grid(data):
    pair = counterfactual(data[0], "colour")
    ((x0, y0, x1, y1),) = pair.changed_boxes
    for rows, cols in ((6, 6), (4, 3), (7, 5)):
        mask = pair.changed_mask(rows, cols)
        for r in range(rows):
            for c in range(cols):
                cell = (c * 96 / cols, r * 96 / rows, (c + 1) * 96 / cols, (r + 1) * 96 / rows)
                overlap = min(x1, cell[2]) > max(x0, cell[0]) and min(y1, cell[3]) > max(y0, cell[1])
                assert bool(mask[r, c]) == overlap
    # a threshold keeps only well-covered cells
    assert pair.changed_mask(6, 6, min_fraction=0.5).sum() <= pair.changed_mask(6, 6).sum()


def test_impossible_changes_and_bad_arguments_are_one_clear_line(data):
    identity = next(s for s in data if s.kind == "identity")
    with pytest.raises(InterpError, match="admits no 'colour' change"):
        counterfactual(identity, "colour")  # the asked-about colour would disappear
    with pytest.raises(InterpError, match="unknown change"):
        counterfactual(identity, "size")
    with pytest.raises(InterpError, match="unknown change"):
        counterfactual_pairs(data, 3, ("colour", "hue"))
    no_state = SyntheticVQA("test", seed=0)[0]
    no_state.render_state = None
    with pytest.raises(InterpError, match="render state"):
        counterfactual(no_state, "colour")


def test_pairs_take_turns_and_come_from_suitable_kinds(data):
    pairs = counterfactual_pairs(data, 9)
    assert [p.change for p in pairs] == ["colour", "shape", "distractor"] * 3
    assert all(
        p.original.kind == ("attribute" if p.change == "colour" else "identity")
        for p in pairs
        if p.change != "distractor"
    )
    assert all(p.answer_changed != (p.change == "distractor") for p in pairs)
    assert len({p.id for p in pairs}) == len(pairs)
