"""The synthetic grounded VQA benchmark: deterministic, balanced, and its answers/boxes/masks are right."""

from __future__ import annotations

import collections
import json
import re
import time

import numpy as np
import pytest
import torch
from PIL import Image

from interp.data import (
    COLOUR_CLASSES,
    COLOUR_RGB,
    COLOURS,
    QUESTION_KINDS,
    SHAPE_CLASSES,
    SHAPES,
    Sample,
    SyntheticVQA,
    is_correct,
    normalize_answer,
)
from interp.errors import InterpError

N = 300  # samples checked in the balance / consistency tests


@pytest.fixture(scope="module")
def val() -> SyntheticVQA:
    return SyntheticVQA(split="val", seed=0)


@pytest.fixture(scope="module")
def samples(val) -> list[Sample]:
    return [val[i] for i in range(N)]


def _centre(box):
    x0, y0, x1, y1 = box
    return (x0 + x1) / 2.0, (y0 + y1) / 2.0


def _find(objects, colour=None, shape=None):
    return [o for o in objects if (colour is None or o["colour"] == colour) and (shape is None or o["shape"] == shape)]


def _boxes(objects):
    return sorted(tuple(o["box"]) for o in objects)


# -- determinism -------------------------------------------------------------------


def test_deterministic_per_split_seed_index():
    a = SyntheticVQA(split="test", seed=1)
    b = SyntheticVQA(split="test", seed=1)
    for i in (0, 1, 17, 511):
        x, y = a[i], b[i]
        assert x.image.tobytes() == y.image.tobytes()
        assert (x.id, x.question, x.answer, x.kind, x.boxes, x.objects) == (
            y.id,
            y.question,
            y.answer,
            y.kind,
            y.boxes,
            y.objects,
        )
    assert a[17].id == "test-000017"
    # order of access does not matter
    assert a[5].image.tobytes() == SyntheticVQA(split="test", seed=1)[5].image.tobytes()


def test_splits_and_seeds_differ():
    val, test = SyntheticVQA(split="val"), SyntheticVQA(split="test")
    train, other_seed = SyntheticVQA(split="train"), SyntheticVQA(split="val", seed=1)
    hashes = {name: {ds[i].image.tobytes() for i in range(60)} for name, ds in
              [("val", val), ("test", test), ("train", train), ("seed1", other_seed)]}  # fmt: skip
    for name, images in hashes.items():
        assert len(images) == 60, name
    assert not hashes["val"] & hashes["test"]
    assert not hashes["val"] & hashes["train"]
    assert not hashes["test"] & hashes["train"]
    assert not hashes["val"] & hashes["seed1"]


def test_lengths_and_indexing():
    assert len(SyntheticVQA(split="val")) == 512
    assert len(SyntheticVQA(split="test")) == 512
    train = SyntheticVQA(split="train")
    assert len(train) >= 1_000_000
    assert train[5_000_000].id == "train-5000000"  # any index >= 0 is valid for train
    test = SyntheticVQA(split="test")
    assert test[-1].id == "test-000511"
    with pytest.raises(IndexError):
        test[512]
    assert [s.id for s in SyntheticVQA(split="val", length=3)] == ["val-000000", "val-000001", "val-000002"]
    with pytest.raises(InterpError):
        SyntheticVQA(split="dev")
    with pytest.raises(InterpError):
        SyntheticVQA(kinds=("colour",))


# -- balance -----------------------------------------------------------------------


def test_kinds_and_answers_balanced(samples):
    kinds = collections.Counter(s.kind for s in samples)
    assert set(kinds) == set(QUESTION_KINDS)
    assert min(kinds.values()) >= N // len(QUESTION_KINDS) - 1
    by_kind = collections.defaultdict(collections.Counter)
    for s in samples:
        by_kind[s.kind][s.answer] += 1
    for kind in ("existence", "spatial"):
        counts = by_kind[kind]
        assert set(counts) == {"yes", "no"}
        assert 0.4 <= counts["yes"] / sum(counts.values()) <= 0.6, (kind, counts)
    counting = by_kind["counting"]
    assert set(counting) == {"1", "2", "3"}
    for answer in "123":
        assert counting[answer] / sum(counting.values()) >= 0.2, counting
    # open answers: every value appears, none dominates
    assert set(by_kind["attribute"]) == set(COLOURS)
    assert set(by_kind["identity"]) == set(SHAPES)
    assert max(by_kind["attribute"].values()) / sum(by_kind["attribute"].values()) < 0.35
    assert max(by_kind["identity"].values()) / sum(by_kind["identity"].values()) < 0.45


def test_answers_vocabulary(val, samples):
    assert val.answers == sorted(val.answers)
    assert set(val.answers) == set(COLOURS) | set(SHAPES) | {"yes", "no", "1", "2", "3"}
    assert {s.answer for s in samples} <= set(val.answers)
    assert SyntheticVQA(kinds=("counting",)).answers == ["1", "2", "3"]
    only = SyntheticVQA(split="val", kinds=["spatial", "identity"], length=20)
    assert [s.kind for s in only][:4] == ["spatial", "identity", "spatial", "identity"]


# -- answers and boxes agree with the scene ----------------------------------------


def _recompute(sample: Sample, image_size: int):
    """Answer and relevant boxes, worked out from the question text and ``objects`` alone."""
    q, objects = sample.question, sample.objects
    if m := re.fullmatch(r"What colour is the (\w+)\?", q):
        (obj,) = _find(objects, shape=m[1])  # the shape is unique
        return obj["colour"], [obj]
    if m := re.fullmatch(r"What shape is the (\w+) object\?", q):
        (obj,) = _find(objects, colour=m[1])
        return obj["shape"], [obj]
    if m := re.fullmatch(r"Is there a (\w+) (\w+)\?", q):
        hits = _find(objects, m[1], m[2])
        if hits:
            return "yes", hits
        return "no", [o for o in objects if o["colour"] == m[1] or o["shape"] == m[2]]
    if m := re.fullmatch(r"How many (\w+)s are there\?", q):
        hits = _find(objects, shape=m[1])
        return str(len(hits)), hits
    if m := re.fullmatch(r"How many (\w+) objects are there\?", q):
        hits = _find(objects, colour=m[1])
        return str(len(hits)), hits
    if m := re.fullmatch(r"Is the (\w+) (\w+) (left of|above) the (\w+) (\w+)\?", q):
        (one,) = _find(objects, m[1], m[2])
        (two,) = _find(objects, m[4], m[5])
        axis = 0 if m[3] == "left of" else 1
        a, b = _centre(one["box"])[axis], _centre(two["box"])[axis]
        assert abs(a - b) >= image_size / 6  # unambiguous
        return ("yes" if a < b else "no"), [one, two]
    raise AssertionError(f"unexpected question {q!r}")


@pytest.mark.parametrize("image_size", [96, 64])
def test_answers_and_boxes_match_objects(image_size, samples):
    data = samples if image_size == 96 else [SyntheticVQA(split="val", image_size=image_size)[i] for i in range(100)]
    for s in data:
        assert s.image.mode == "RGB" and s.image.size == (image_size, image_size)
        assert s.answer == s.answer.lower() and len(s.answer.split()) == 1
        assert normalize_answer(s.answer) == s.answer
        answer, relevant = _recompute(s, image_size)
        assert s.answer == answer, (s.id, s.question, s.objects)
        assert sorted(tuple(b) for b in s.boxes) == _boxes(relevant), s.id
        if s.kind == "counting":
            assert s.answer in {"1", "2", "3"}
        # scene rules: boxes inside the image, distinct (colour, shape), no overlaps (with a gap)
        assert len({(o["colour"], o["shape"]) for o in s.objects}) == len(s.objects)
        for o in s.objects:
            x0, y0, x1, y1 = o["box"]
            assert all(isinstance(v, int) for v in o["box"])
            assert 0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size
            assert x1 - x0 == y1 - y0
            side = (x1 - x0) * 96 / image_size
            assert (17 <= side <= 23) if o["size"] == "small" else (27 <= side <= 35)
            assert o["shape"] in SHAPES and o["colour"] in COLOURS
        for i, p in enumerate(s.objects):
            for q in s.objects[i + 1 :]:
                (a0, b0, a1, b1), (c0, d0, c1, d1) = p["box"], q["box"]
                assert a1 < c0 or c1 < a0 or b1 < d0 or d1 < b0, s.id


def test_pixels_are_drawn_where_the_objects_are(samples):
    for s in samples[:100]:
        pixels = np.asarray(s.image)
        for o in s.objects:
            x0, y0, x1, y1 = o["box"]
            cx, cy = (x0 + x1 - 1) // 2, (y0 + y1 - 1) // 2
            assert tuple(pixels[cy, cx]) == COLOUR_RGB[o["colour"]], (s.id, o)
        # every pixel with an object colour lies inside a box of an object of that colour
        inside = {c: np.zeros(pixels.shape[:2], bool) for c in COLOURS}
        for o in s.objects:
            x0, y0, x1, y1 = o["box"]
            inside[o["colour"]][y0:y1, x0:x1] = True
        for colour, rgb in COLOUR_RGB.items():
            hit = (pixels == np.array(rgb, dtype=np.uint8)).all(-1)
            assert not (hit & ~inside[colour]).any(), (s.id, colour)
            if colour in {o["colour"] for o in s.objects}:
                assert hit.any()


# -- relevant_mask ---------------------------------------------------------------------


def _blank(boxes, size=96) -> Sample:
    return Sample(id="x", image=Image.new("RGB", (size, size)), question="", answer="", kind="attribute",
                  boxes=boxes, objects=[])  # fmt: skip


def test_relevant_mask_hand_worked():
    top_left = _blank([(0, 0, 16, 16)])  # exactly the top-left 16x16 px cell
    mask = top_left.relevant_mask(6, 6)
    assert mask.dtype == torch.bool and mask.shape == (6, 6)
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[0, 0] = True
    assert torch.equal(mask, expected)
    # 3 rows x 4 cols: cells are 32 px tall, 24 px wide; the box covers 256/768 of cell (0, 0)
    mask = top_left.relevant_mask(3, 4)
    assert mask.shape == (3, 4) and mask.sum() == 1 and mask[0, 0]
    assert not top_left.relevant_mask(3, 4, min_fraction=0.4).any()
    # 24x24: 4 px cells, a 4x4 block
    mask = top_left.relevant_mask(24, 24)
    assert mask[:4, :4].all() and mask.sum() == 16
    # threshold is inclusive: 8x8 px is exactly a quarter of a 16x16 cell
    assert _blank([(0, 0, 8, 8)]).relevant_mask(6, 6)[0, 0]
    assert not _blank([(0, 0, 8, 8)]).relevant_mask(6, 6, min_fraction=0.3).any()
    # a box straddling columns on 3x4: x 16..40 covers 8/24 of col 0 and 16/24 of col 1, rows 0..1 fully
    mask = _blank([(16, 0, 40, 64)]).relevant_mask(3, 4)
    assert mask.tolist() == [[True, True, False, False], [True, True, False, False], [False] * 4]
    # two boxes, 6x6: (40, 40)-(56, 56) hits cells (2..3, 2..3) by 8x8 each = 0.25
    mask = _blank([(0, 0, 16, 16), (40, 40, 56, 56)]).relevant_mask(6, 6)
    assert mask.sum() == 5 and mask[0, 0] and mask[2:4, 2:4].all()
    assert not _blank([]).relevant_mask(6, 6).any()


def _mask_by_hand(boxes, rows, cols, size, min_fraction=0.25):
    ch, cw = size / rows, size / cols
    out = torch.zeros(rows, cols, dtype=torch.bool)
    for r in range(rows):
        for c in range(cols):
            area = 0.0
            for x0, y0, x1, y1 in boxes:
                dx = max(0.0, min(x1, (c + 1) * cw) - max(x0, c * cw))
                dy = max(0.0, min(y1, (r + 1) * ch) - max(y0, r * ch))
                area += dx * dy
            out[r, c] = area / (ch * cw) >= min_fraction - 1e-9  # 1e-9: float slack at exact ties
    return out


def test_relevant_mask_on_samples(samples):
    for s in samples[:60]:
        for rows, cols in [(6, 6), (3, 4), (24, 24), (5, 7)]:
            assert torch.equal(s.relevant_mask(rows, cols), _mask_by_hand(s.boxes, rows, cols, 96)), (s.id, rows)
        if s.boxes:  # every relevant object reaches at least one 16 px patch
            for box in s.boxes:
                assert _blank([box]).relevant_mask(6, 6).any()


# -- patch labels --------------------------------------------------------------------


@pytest.mark.parametrize("grid", [(6, 6), (3, 4)])
def test_patch_labels_agree_with_pixels(val, samples, grid):
    rows, cols = grid
    for s in samples[:80]:
        colour, shape = val.patch_labels(s, rows, cols)
        assert colour.dtype == torch.long and shape.dtype == torch.long
        assert colour.shape == shape.shape == (rows, cols)
        assert torch.equal(colour == 0, shape == 0)
        assert int(colour.max()) < len(COLOUR_CLASSES) and int(shape.max()) < len(SHAPE_CLASSES)
        pixels = np.asarray(s.image)
        # each object's drawn pixels: its colour, inside its box (boxes never overlap)
        drawn = []
        for o in s.objects:
            x0, y0, x1, y1 = o["box"]
            in_box = np.zeros(pixels.shape[:2], bool)
            in_box[y0:y1, x0:x1] = True
            drawn.append(in_box & (pixels == np.array(COLOUR_RGB[o["colour"]], np.uint8)).all(-1))
        ch, cw = 96 // rows, 96 // cols
        for r in range(rows):
            for c in range(cols):
                counts = [int(m[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw].sum()) for m in drawn]
                label = COLOUR_CLASSES[int(colour[r, c])]
                if label == "background":
                    assert max(counts) < 0.1 * ch * cw, (s.id, r, c, counts)
                else:
                    (obj,) = _find(s.objects, label, SHAPE_CLASSES[int(shape[r, c])])
                    mine = counts[s.objects.index(obj)]
                    assert mine >= 0.1 * ch * cw and mine == max(counts), (s.id, r, c, counts)
        # the cell holding an object's centre is labelled with it, and that pixel has the object's RGB
        for o in s.objects:
            x0, y0, x1, y1 = o["box"]
            cx, cy = (x0 + x1 - 1) // 2, (y0 + y1 - 1) // 2
            r, c = cy // ch, cx // cw
            assert tuple(pixels[cy, cx]) == COLOUR_RGB[o["colour"]]
            if o["size"] == "large":
                assert COLOUR_CLASSES[int(colour[r, c])] == o["colour"], (s.id, o)
                assert SHAPE_CLASSES[int(shape[r, c])] == o["shape"], (s.id, o)


def test_patch_labels_hand_worked():
    obj = {"shape": "square", "colour": "blue", "size": "small", "box": (0, 0, 16, 16)}
    s = _blank([obj["box"]])
    s.objects = [obj]
    colour, shape = SyntheticVQA().patch_labels(s, 6, 6)
    assert colour[0, 0] == COLOUR_CLASSES.index("blue") and shape[0, 0] == SHAPE_CLASSES.index("square")
    assert colour.sum() == colour[0, 0] and shape.sum() == shape[0, 0]
    colour, _ = s.patch_labels(12, 12)
    assert (colour[:2, :2] == COLOUR_CLASSES.index("blue")).all() and (colour.bool().sum() == 4)


def test_centre_mask_marks_each_objects_centre_cell(samples):
    for s in samples[:80]:
        mask = s.centre_mask(6, 6)
        assert mask.dtype == torch.bool and mask.shape == (6, 6)
        assert int(mask.sum()) == len(s.objects), s.id  # one distinct cell per object at 6x6
        colour, _ = s.patch_labels(6, 6)
        pixels = np.asarray(s.image)
        for o in s.objects:
            x0, y0, x1, y1 = o["box"]
            cx, cy = (x0 + x1 - 1) // 2, (y0 + y1 - 1) // 2
            assert tuple(pixels[cy, cx]) == COLOUR_RGB[o["colour"]]
            assert mask[cy // 16, cx // 16]
        # a centre cell is never background in the patch labels
        assert (colour[mask] > 0).all(), s.id
        assert s.centre_mask(3, 4).sum() <= len(s.objects)


def test_centre_mask_hand_worked():
    obj = {"shape": "square", "colour": "blue", "size": "small", "box": (10, 30, 30, 50)}  # centre pixel (19, 39)
    s = _blank([obj["box"]])
    s.objects = [obj]
    assert s.centre_mask(6, 6).nonzero().tolist() == [[2, 1]]
    assert s.centre_mask(3, 4).nonzero().tolist() == [[1, 0]]  # 32 px rows, 24 px cols
    assert s.centre_mask(96, 96).nonzero().tolist() == [[39, 19]]
    assert not _blank([]).centre_mask(6, 6).any()


# -- scoring ---------------------------------------------------------------------------


def test_normalize_answer():
    assert normalize_answer("The Red.") == "red"
    assert normalize_answer("two") == "2"
    assert normalize_answer("  An   ORANGE!  ") == "orange"
    assert normalize_answer("Yes, it is") == "yes it is"
    assert normalize_answer("a red circle") == "red circle"
    assert normalize_answer("Three squares.") == "3 squares"
    assert normalize_answer("") == ""


def test_is_correct():
    assert is_correct("The Red.", "red")
    assert is_correct("Yes, it is", "yes")
    assert is_correct("red circle", "red")
    assert is_correct("two", "2")
    assert is_correct("2 circles", "2")
    assert is_correct("Three.", "3")
    assert not is_correct("blue", "red")
    assert not is_correct("no", "yes")
    assert not is_correct("there are two", "2")
    assert not is_correct("", "red")
    assert not is_correct("reddish", "red")


# -- export and speed --------------------------------------------------------------------


def test_to_hf_dataset_round_trip(val):
    pytest.importorskip("datasets")  # optional: not in the package's dependencies
    hf = val.to_hf_dataset(n=4)
    assert len(hf) == 4
    assert set(hf.column_names) == {"id", "image", "question", "answer", "kind", "boxes", "objects"}
    for i, row in enumerate(hf):
        s = val[i]
        assert row["id"] == s.id and row["question"] == s.question
        assert row["answer"] == s.answer and row["kind"] == s.kind
        assert row["boxes"] == [list(b) for b in s.boxes]
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), np.asarray(s.image))
        objects = json.loads(row["objects"])
        assert [{**o, "box": tuple(o["box"])} for o in objects] == s.objects


def test_generation_is_fast():
    ds = SyntheticVQA(split="train", seed=5)
    ds[0]
    start = time.perf_counter()
    for i in range(200):
        ds[i]
    per_sample = (time.perf_counter() - start) / 200
    assert per_sample < 0.005, f"{per_sample * 1e3:.2f} ms per sample"  # about 0.5 ms here; lenient for slow CI
