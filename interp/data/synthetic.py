"""A grounded synthetic VQA benchmark: procedurally drawn scenes with known boxes.

Every sample is a small image of a few flat-coloured shapes on a light-grey,
slightly noisy background, a short question about it, a one-word answer and the
pixel boxes of the objects the question is about. Everything is deterministic
from ``(seed, split, index)``, so a sample can be regenerated anywhere from its id.

It serves two purposes:

* training a tiny LLaVA-style "model organism" (a CLIP-style tower on 96x96
  images with a 6x6 grid of 16 px patches, feeding a small language model):
  :meth:`SyntheticVQA.patch_labels` gives dense per-patch colour/shape labels (and
  :meth:`Sample.centre_mask` one "centre" cell per object) for pre-training the vision tower, and the question/answer pairs train the whole;
* scoring where a model attends: :meth:`Sample.relevant_mask` maps the
  ground-truth boxes onto any patch grid.

::

    from interp.data.synthetic import SyntheticVQA, is_correct
    ds = SyntheticVQA(split="val", seed=0)
    s = ds[17]
    s.image, s.question, s.answer      # PIL 96x96, "What colour is the circle?", "red"
    s.relevant_mask(6, 6)              # torch.bool[6, 6]
    colour, shape = ds.patch_labels(s, 6, 6)
    s.centre_mask(6, 6)                # torch.bool[6, 6]: one cell per object

Conventions
-----------
* Boxes are ``(x0, y0, x1, y1)`` integer pixels with **exclusive** ends: the box
  covers pixel columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1`` (so the
  top-left 16x16 px cell is ``(0, 0, 16, 16)``). Every drawn pixel of an object
  lies inside its box; the box is the tight bounding square of the shape.
* Objects are drawn without anti-aliasing, so every object pixel has exactly its
  colour's RGB from :data:`COLOUR_RGB`; noise and clutter are only on the
  background (clutter is drawn first and objects over it).
* Objects never overlap: any two boxes are at least ``4 * image_size / 96`` px apart.
* Within a scene every object has a distinct (colour, shape) pair, so "the red
  circle" always names at most one object.

Question kinds (answers are single lowercase words)
---------------------------------------------------
=========== =============================================== =====================
kind        question                                        answer
=========== =============================================== =====================
attribute   What colour is the <shape>?                     colour (shape unique)
identity    What shape is the <colour> object?              shape (colour unique)
existence   Is there a <colour> <shape>?                    yes / no
counting    How many <shape>s are there? /                  1 / 2 / 3
            How many <colour> objects are there?
spatial     Is the <c1> <s1> left of the <c2> <s2>? /       yes / no
            Is the <c1> <s1> above the <c2> <s2>?
=========== =============================================== =====================

Kinds go round-robin over the index (``kinds[i % len(kinds)]``) and, within a
kind, the target answer cycles over its values (yes/no; 1/2/3), so any
contiguous run of indices is balanced. The scene is then drawn to make that
answer true, and everything the question text mentions (colours, shapes) is
uniform and independent of the answer, so the question alone says nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import InterpError

__all__ = [
    "CHANGES",
    "COLOURS",
    "COLOUR_CLASSES",
    "COLOUR_RGB",
    "QUESTION_KINDS",
    "SHAPES",
    "SHAPE_CLASSES",
    "SPLIT_SIZES",
    "Counterfactual",
    "Sample",
    "SyntheticVQA",
    "answer_of",
    "counterfactual",
    "counterfactual_pairs",
    "is_correct",
    "normalize_answer",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
# Saturated, well-separated hues (about 0, 130, 225, 50, 280, 28 degrees), none
# close to the grey background or the grey clutter.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 20),
    "purple": (150, 60, 200),
    "orange": (245, 130, 20),
}
QUESTION_KINDS: tuple[str, ...] = ("attribute", "identity", "existence", "counting", "spatial")
# Label spaces of :meth:`SyntheticVQA.patch_labels` (index 0 is background).
COLOUR_CLASSES: tuple[str, ...] = ("background",) + COLOURS
SHAPE_CLASSES: tuple[str, ...] = ("background",) + SHAPES

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_SIZES: dict[str, int] = {"train": 1_000_000, "val": 512, "test": 512}
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}

COUNT_ANSWERS: tuple[str, ...] = ("1", "2", "3")
_MAX_COUNT = 3

# Geometry at 96 px; everything scales with image_size / 96.
_SMALL = (18, 22)
_LARGE = (28, 34)
_GAP = 4  # minimum gap between two objects' boxes
_BORDER = 2  # minimum gap between a box and the image edge
_BACKGROUND = (212, 228)  # grey level of the background, drawn per image
_NOISE = 6  # per-pixel background noise, +- grey levels


# -- the sample --------------------------------------------------------------------


Box = tuple[int, int, int, int]


@dataclass
class Sample:
    """One image-question-answer triple with its ground truth.

    ``boxes`` are the question-relevant objects' boxes: the object asked about
    (attribute, identity, existence "yes"), both objects (spatial), every counted
    object (counting), or, for existence "no", the objects that share the asked
    colour or shape (empty if none). ``objects`` lists every object in the scene as
    ``{"shape", "colour", "size" ("small"/"large"), "box"}``.
    """

    id: str
    image: Image.Image
    question: str
    answer: str
    kind: str
    boxes: list[Box] = field(default_factory=list)
    objects: list[dict] = field(default_factory=list)
    #: what re-drawing the scene needs (the random state before rendering, image size,
    #: clutter); lets :func:`counterfactual` draw the same background under new objects
    render_state: dict | None = field(default=None, repr=False, compare=False)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(width, height)`` of the image in pixels."""
        return self.image.size

    def relevant_mask(self, rows: int, cols: int, *, min_fraction: float = 0.25) -> torch.Tensor:
        """``torch.bool[rows, cols]``: cells whose area the relevant boxes cover by at least ``min_fraction``.

        The grid splits the image into ``rows x cols`` equal cells (fractional pixel
        edges are fine, e.g. 3x4 or 7x7 on 96 px); coverage is the exact area
        fraction of each cell inside the union of ``boxes``.
        """
        return boxes_mask(self.boxes, self.image.size, rows, cols, min_fraction=min_fraction)

    def patch_labels(self, rows: int, cols: int, *, min_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense per-cell labels; see :meth:`SyntheticVQA.patch_labels`."""
        return _patch_labels(self, rows, cols, min_fraction)

    def centre_mask(self, rows: int, cols: int) -> torch.Tensor:
        """``torch.bool[rows, cols]``: the cells holding an object's centre pixel, one per object.

        An object's centre pixel is ``((x0 + x1 - 1) // 2, (y0 + y1 - 1) // 2)`` of its box
        (always one of its drawn pixels); the cell is the one containing that pixel's middle.
        All objects of the scene count, relevant or not. On the 6x6 grid of a 96 px image two
        objects never share a centre cell (their centres are at least 22 px apart on one axis),
        so ``centre_mask(6, 6).sum() == len(objects)``; coarser grids may merge them.
        """
        rows, cols = _check_grid(rows, cols)
        width, height = self.image.size
        out = torch.zeros(rows, cols, dtype=torch.bool)
        for obj in self.objects:
            x0, y0, x1, y1 = obj["box"]
            cx, cy = (x0 + x1 - 1) // 2, (y0 + y1 - 1) // 2
            out[min(rows - 1, int((cy + 0.5) * rows / height)), min(cols - 1, int((cx + 0.5) * cols / width))] = True
        return out


# -- answers -------------------------------------------------------------------------

_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
    "eleven": "11", "twelve": "12",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = re.compile(r"[^\w\s]|_")


def normalize_answer(text: str) -> str:
    """Canonical form of an answer or a model's reply.

    Lowercase; punctuation becomes a space; whitespace collapses; leading articles
    (a/an/the) go; number words become digits ("two" -> "2"). The whole reply is
    kept (``"The Red circle."`` -> ``"red circle"``); :func:`is_correct` looks at
    its first word.
    """
    words = _PUNCTUATION.sub(" ", str(text).lower()).split()
    while words and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(_NUMBER_WORDS.get(word, word) for word in words)


def is_correct(prediction: str, answer: str) -> bool:
    """True if the normalized prediction, or its first word, equals the normalized answer."""
    pred = normalize_answer(prediction)
    gold = normalize_answer(answer)
    if pred == gold:
        return True
    words = pred.split()
    return bool(words) and bool(gold) and words[0] == gold


# -- the dataset ---------------------------------------------------------------------


#: the scenes' side when none is asked for: the size every organism was trained on (also the
#: dynamic-resolution Qwen2-VL one), so VLM.scene_size gives it for them
DEFAULT_IMAGE_SIZE = 96


class SyntheticVQA:
    """A map-style dataset of procedurally drawn VQA samples; ``ds[i]`` is a :class:`Sample`.

    ``split`` is ``"train"``, ``"val"`` or ``"test"``; the random stream of sample
    ``i`` is ``numpy.random.default_rng([seed, split_code, i])``, so samples are
    reproducible one by one and splits never share a stream. ``train`` accepts any
    index ``i >= 0`` (its nominal ``len`` is 1,000,000); ``val`` and ``test`` have
    512 samples each (``length`` overrides the nominal length of any split).

    ``min_objects``/``max_objects`` bound the number of objects in a scene; a
    counting question needs up to 3 matching objects and a spatial one 2, so those
    scenes hold at least that many whatever ``max_objects`` says. With
    ``clutter=True`` a few thin grey lines and dots are drawn under the objects.
    ``kinds`` picks which question kinds to generate (round-robin over the index).
    """

    def __init__(
        self,
        split: str = "train",
        seed: int = 0,
        image_size: int = DEFAULT_IMAGE_SIZE,
        min_objects: int = 2,
        max_objects: int = 4,
        clutter: bool = True,
        kinds: Sequence[str] = QUESTION_KINDS,
        length: int | None = None,
    ) -> None:
        if split not in SPLITS:
            raise InterpError(f"Unknown split {split!r}: use one of {', '.join(SPLITS)}.")
        if isinstance(kinds, str):
            kinds = (kinds,)
        kinds = tuple(kinds)
        unknown = [k for k in kinds if k not in QUESTION_KINDS]
        if not kinds or unknown:
            raise InterpError(
                f"Unknown question kind(s) {unknown or kinds!r}: use a non-empty subset of {', '.join(QUESTION_KINDS)}."
            )
        if len(set(kinds)) != len(kinds):
            raise InterpError(f"Question kinds {kinds!r} repeat a kind: list each kind once.")
        if int(image_size) < 32:
            raise InterpError(f"image_size={image_size} is too small: use at least 32 pixels.")
        if not 1 <= int(min_objects) <= int(max_objects):
            raise InterpError(
                f"Need 1 <= min_objects <= max_objects, got min_objects={min_objects}, max_objects={max_objects}."
            )
        if int(max_objects) > 6:
            raise InterpError(f"max_objects={max_objects} does not fit without overlaps: use at most 6.")
        if int(seed) < 0:
            raise InterpError(f"seed={seed} must be a non-negative integer.")
        if length is not None and int(length) < 0:
            raise InterpError(f"length={length} must be non-negative.")
        self.split = split
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.min_objects = int(min_objects)
        self.max_objects = int(max_objects)
        self.clutter = bool(clutter)
        self.kinds = kinds
        self.length = SPLIT_SIZES[split] if length is None else int(length)
        scale = self.image_size / 96.0
        self._small = (round(_SMALL[0] * scale), round(_SMALL[1] * scale))
        self._large = (round(_LARGE[0] * scale), round(_LARGE[1] * scale))
        self._gap = max(1, round(_GAP * scale))
        self._border = max(1, round(_BORDER * scale))

    # -- container protocol ------------------------------------------------------

    def __len__(self) -> int:
        return self.length

    def counterfactual_pairs(
        self, n: int, changes: Sequence[str] = ("colour", "shape", "distractor"), *, seed: int = 0
    ) -> list[Counterfactual]:
        """``n`` counterfactuals of this split (:func:`counterfactual_pairs`; the dataset offers
        pairs, :class:`interp.data.capabilities.OffersCounterfactuals`)."""
        return counterfactual_pairs(self, n, changes, seed=seed)

    def labelled_samples(self, n: int | None) -> list[Sample]:
        """The first ``n`` samples (all when None): each knows its cells' colour and shape
        (:class:`interp.data.capabilities.OffersCellLabels`)."""
        return [self[i] for i in range(len(self) if n is None else min(n, len(self)))]

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self)):
            yield self[index]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"SyntheticVQA indices must be integers or slices, not {type(index).__name__}")
        index = int(index)
        if index < 0:
            index += len(self)
        if index < 0 or (self.split != "train" and index >= len(self)):
            raise IndexError(f"index {index} out of range for the {self.split!r} split of {len(self)} samples")
        return self._generate(index)

    def __repr__(self) -> str:
        return (
            f"SyntheticVQA(split={self.split!r}, seed={self.seed}, image_size={self.image_size}, "
            f"min_objects={self.min_objects}, max_objects={self.max_objects}, clutter={self.clutter}, "
            f"kinds={self.kinds!r}, length={self.length})"
        )

    # -- public helpers ----------------------------------------------------------

    @property
    def answers(self) -> list[str]:
        """Every answer this dataset can give, sorted."""
        out: set[str] = set()
        for kind in self.kinds:
            out.update(
                {
                    "attribute": COLOURS,
                    "identity": SHAPES,
                    "existence": ("yes", "no"),
                    "counting": COUNT_ANSWERS,
                    "spatial": ("yes", "no"),
                }[kind]
            )
        return sorted(out)

    def patch_labels(
        self, sample: Sample, rows: int, cols: int, *, min_fraction: float = 0.1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense labels ``(colour, shape)``, each ``torch.long[rows, cols]``.

        Cell ``(r, c)`` takes the object whose drawn pixels cover the largest part
        of it, provided that part is at least ``min_fraction`` of the cell's area;
        otherwise it is background (0). Values index :data:`COLOUR_CLASSES` =
        ``("background",) + COLOURS`` and :data:`SHAPE_CLASSES` =
        ``("background",) + SHAPES``. Works on any grid, like
        :meth:`Sample.relevant_mask`.
        """
        return _patch_labels(sample, rows, cols, min_fraction)

    def to_hf_dataset(self, n: int | None = None):
        """The first ``n`` samples (default: ``len(self)``) as a ``datasets.Dataset``.

        Columns: ``id``, ``image`` (``datasets.Image``), ``question``, ``answer``,
        ``kind``, ``boxes`` (list of ``[x0, y0, x1, y1]``), ``objects`` (a JSON
        string of the objects list). For ``train`` pass ``n``: its nominal length
        is a million.
        """
        try:
            import datasets
        except ImportError as error:  # pragma: no cover - datasets is an optional dependency
            raise InterpError("to_hf_dataset needs the 'datasets' package: pip install datasets.") from error
        n = len(self) if n is None else int(n)
        if n < 0 or (self.split != "train" and n > len(self)):
            raise InterpError(f"n={n} is out of range for the {self.split!r} split of {len(self)} samples.")
        columns: dict[str, list] = {k: [] for k in ("id", "image", "question", "answer", "kind", "boxes", "objects")}
        for index in range(n):
            sample = self[index]
            columns["id"].append(sample.id)
            columns["image"].append(sample.image)
            columns["question"].append(sample.question)
            columns["answer"].append(sample.answer)
            columns["kind"].append(sample.kind)
            columns["boxes"].append([list(box) for box in sample.boxes])
            columns["objects"].append(json.dumps([{**o, "box": list(o["box"])} for o in sample.objects]))
        features = datasets.Features(
            {
                "id": datasets.Value("string"),
                "image": datasets.Image(),
                "question": datasets.Value("string"),
                "answer": datasets.Value("string"),
                "kind": datasets.Value("string"),
                "boxes": datasets.List(datasets.List(datasets.Value("int32"))),
                "objects": datasets.Value("string"),
            }
        )
        return datasets.Dataset.from_dict(columns, features=features)

    # -- generation --------------------------------------------------------------

    def _generate(self, index: int) -> Sample:
        rng = np.random.default_rng([self.seed, _SPLIT_CODE[self.split], index])
        n_kinds = len(self.kinds)
        kind = self.kinds[index % n_kinds]
        turn = index // n_kinds  # how many earlier samples had this kind
        build = getattr(self, f"_{kind}")
        question, answer, objects, relevant = build(rng, turn)
        state = {"rng": rng.bit_generator.state, "image_size": self.image_size, "clutter": self.clutter}
        image = self._render(rng, objects)
        return Sample(
            id=f"{self.split}-{index:06d}",
            image=image,
            question=question,
            answer=answer,
            kind=kind,
            boxes=[objects[k]["box"] for k in relevant],
            objects=objects,
            render_state=state,
        )

    def _n_objects(self, rng: np.random.Generator, at_least: int = 1) -> int:
        low = max(self.min_objects, at_least)
        high = max(self.max_objects, at_least)
        return int(rng.integers(low, high + 1))

    # Each builder returns (question, answer, objects, indices of the relevant objects).

    def _attribute(self, rng, turn):
        n = self._n_objects(rng)
        shape = SHAPES[rng.integers(len(SHAPES))]
        others = [s for s in SHAPES if s != shape]
        shapes = [shape] + [others[k] for k in rng.integers(len(others), size=n - 1)]
        objects = self._scene(rng, _pairs(rng, shapes=shapes))
        target = next(k for k, o in enumerate(objects) if o["shape"] == shape)
        return f"What colour is the {shape}?", objects[target]["colour"], objects, [target]

    def _identity(self, rng, turn):
        n = self._n_objects(rng)
        colour = COLOURS[rng.integers(len(COLOURS))]
        others = [c for c in COLOURS if c != colour]
        colours = [colour] + [others[k] for k in rng.integers(len(others), size=n - 1)]
        objects = self._scene(rng, _pairs(rng, colours=colours))
        target = next(k for k, o in enumerate(objects) if o["colour"] == colour)
        return f"What shape is the {colour} object?", objects[target]["shape"], objects, [target]

    def _existence(self, rng, turn):
        n = self._n_objects(rng)
        objects = self._scene(rng, _pairs(rng, n=n))
        present = {(o["colour"], o["shape"]) for o in objects}
        if turn % 2 == 0:  # yes
            target = int(rng.integers(len(objects)))
            colour, shape = objects[target]["colour"], objects[target]["shape"]
            answer, relevant = "yes", [target]
        else:  # no: an absent pair, ideally one whose colour and shape both appear (a binding question)
            colours = {c for c, _ in present}
            shapes = {s for _, s in present}
            absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
            both = [(c, s) for c, s in absent if c in colours and s in shapes]
            either = [(c, s) for c, s in absent if c in colours or s in shapes]
            pool = both or either
            colour, shape = pool[rng.integers(len(pool))]
            answer = "no"
            relevant = [k for k, o in enumerate(objects) if o["colour"] == colour or o["shape"] == shape]
        return f"Is there a {colour} {shape}?", answer, objects, relevant

    def _counting(self, rng, turn):
        count = turn % 3 + 1
        # The scene size does not depend on the answer, so counting every object is no shortcut.
        n = self._n_objects(rng, at_least=_MAX_COUNT)
        if rng.random() < 0.5:
            shape = SHAPES[rng.integers(len(SHAPES))]
            others = [s for s in SHAPES if s != shape]
            shapes = [shape] * count + [others[k] for k in rng.integers(len(others), size=n - count)]
            objects = self._scene(rng, _pairs(rng, shapes=shapes))
            question = f"How many {shape}s are there?"
            relevant = [k for k, o in enumerate(objects) if o["shape"] == shape]
        else:
            colour = COLOURS[rng.integers(len(COLOURS))]
            others = [c for c in COLOURS if c != colour]
            colours = [colour] * count + [others[k] for k in rng.integers(len(others), size=n - count)]
            objects = self._scene(rng, _pairs(rng, colours=colours))
            question = f"How many {colour} objects are there?"
            relevant = [k for k, o in enumerate(objects) if o["colour"] == colour]
        return question, str(count), objects, relevant

    def _spatial(self, rng, turn):
        want_yes = turn % 2 == 0
        n = self._n_objects(rng, at_least=2)
        objects = self._scene(rng, _pairs(rng, n=n))
        threshold = self.image_size / 6.0
        centres = [((o["box"][0] + o["box"][2]) / 2.0, (o["box"][1] + o["box"][3]) / 2.0) for o in objects]
        axes = ["x", "y"] if rng.random() < 0.5 else ["y", "x"]
        for axis in axes:
            a = 0 if axis == "x" else 1
            # ordered pairs (p, q) with p strictly left of / above q by at least the threshold
            pairs = [(p, q) for p in range(n) for q in range(n) if centres[q][a] - centres[p][a] >= threshold]
            if pairs:
                break
        else:  # pragma: no cover - two non-overlapping boxes always differ enough on one axis
            raise RuntimeError("no unambiguous spatial relation in the scene")
        p, q = pairs[rng.integers(len(pairs))]
        first, second = (p, q) if want_yes else (q, p)
        relation = "left of" if axis == "x" else "above"
        one, two = objects[first], objects[second]
        question = f"Is the {one['colour']} {one['shape']} {relation} the {two['colour']} {two['shape']}?"
        return question, "yes" if want_yes else "no", objects, [first, second]

    # -- layout and drawing ------------------------------------------------------

    def _scene(self, rng: np.random.Generator, pairs: list[tuple[str, str]]) -> list[dict]:
        """Place objects with the given (colour, shape) pairs; sizes are drawn here."""
        n = len(pairs)
        for attempt in range(50):
            force_small = attempt >= 10
            sizes = []
            for _ in range(n):
                large = (not force_small) and rng.random() < 0.5
                low, high = self._large if large else self._small
                sizes.append(("large" if large else "small", int(rng.integers(low, high + 1))))
            boxes = self._place([side for _, side in sizes], rng)
            if boxes is not None:
                break
        else:
            raise InterpError(
                f"Could not place {n} objects on a {self.image_size} px image without overlaps: use fewer objects."
            )
        # shuffle so list order says nothing about which object was the target
        order = rng.permutation(n)
        objects = []
        for k in order:
            colour, shape = pairs[k]
            objects.append({"shape": shape, "colour": colour, "size": sizes[k][0], "box": boxes[k]})
        return objects

    def _place(self, sides: list[int], rng: np.random.Generator) -> list[Box] | None:
        """Non-overlapping boxes (with gaps) for squares of the given sides, largest first; None on failure."""
        size, gap, border = self.image_size, self._gap, self._border
        boxes: list[Box | None] = [None] * len(sides)
        placed = np.zeros((0, 4), dtype=np.int64)
        for k in sorted(range(len(sides)), key=lambda j: -sides[j]):
            side = sides[k]
            high = size - border - side
            cand = rng.integers(border, high + 1, size=(64, 2))
            x0, y0 = cand[:, :1], cand[:, 1:]
            if len(placed):
                # separated on x or on y by at least the gap, against every placed box
                apart = (
                    (x0 + side + gap <= placed[:, 0])
                    | (placed[:, 2] + gap <= x0)
                    | (y0 + side + gap <= placed[:, 1])
                    | (placed[:, 3] + gap <= y0)
                )
                ok = np.flatnonzero(apart.all(axis=1))
                if not len(ok):
                    return None
                x, y = int(cand[ok[0], 0]), int(cand[ok[0], 1])
            else:
                x, y = int(cand[0, 0]), int(cand[0, 1])
            box = (x, y, x + side, y + side)
            boxes[k] = box
            placed = np.vstack([placed, np.array([box], dtype=np.int64)])
        return boxes  # type: ignore[return-value]

    def _render(self, rng: np.random.Generator, objects: list[dict]) -> Image.Image:
        return _render_scene(rng, objects, self.image_size, self.clutter)


# -- module helpers ------------------------------------------------------------------


def _render_scene(rng: np.random.Generator, objects: list[dict], size: int, clutter: bool) -> Image.Image:
    """Background (grey level, noise), clutter, then the objects, drawing from ``rng`` in that order."""
    grey = int(rng.integers(_BACKGROUND[0], _BACKGROUND[1] + 1))
    noise = rng.integers(-_NOISE, _NOISE + 1, size=(size, size, 1), dtype=np.int16)
    pixels = np.broadcast_to(grey + noise, (size, size, 3)).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    if clutter:
        width = max(1, round(size / 96))
        for _ in range(int(rng.integers(0, 3))):
            x0, y0, x1, y1 = (int(v) for v in rng.integers(0, size, size=4))
            tone = int(rng.integers(135, 176))
            draw.line([(x0, y0), (x1, y1)], fill=(tone, tone, tone), width=width)
        for _ in range(int(rng.integers(0, 5))):
            x, y = (int(v) for v in rng.integers(0, size, size=2))
            r = int(rng.integers(1, max(2, round(2 * size / 96)) + 1))
            tone = int(rng.integers(135, 176))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(tone, tone, tone))
    for obj in objects:
        _draw_shape(draw, obj["shape"], obj["box"], COLOUR_RGB[obj["colour"]])
    return image


def _pairs(rng, *, n: int | None = None, shapes=None, colours=None) -> list[tuple[str, str]]:
    """(colour, shape) pairs, all distinct; fixes the given shapes or colours and draws the rest."""
    if shapes is not None:
        n = len(shapes)
    elif colours is not None:
        n = len(colours)
    assert n is not None
    out: list[tuple[str, str]] = []
    for k in range(n):
        while True:
            shape = shapes[k] if shapes is not None else SHAPES[rng.integers(len(SHAPES))]
            colour = colours[k] if colours is not None else COLOURS[rng.integers(len(COLOURS))]
            if (colour, shape) not in out:
                break
        out.append((colour, shape))
    return out


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Box, fill) -> None:
    """Draw a shape filling the box (exclusive ends) without anti-aliasing."""
    x0, y0, x1, y1 = box
    right, bottom = x1 - 1, y1 - 1
    cx, cy = (x0 + right) / 2.0, (y0 + bottom) / 2.0
    if shape == "circle":
        draw.ellipse([x0, y0, right, bottom], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, right, bottom], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (right, bottom), (x0, bottom)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (right, cy), (cx, bottom), (x0, cy)], fill=fill)
    else:  # pragma: no cover
        raise ValueError(f"unknown shape {shape!r}")


def _grid_weights(pixels: int, cells: int) -> np.ndarray:
    """``[cells, pixels]``: length of pixel ``p`` (the interval [p, p+1)) inside cell ``c``."""
    edges = np.arange(cells + 1, dtype=np.float64) * (pixels / cells)
    lo = np.arange(pixels, dtype=np.float64)
    overlap = np.minimum(lo[None, :] + 1, edges[1:, None]) - np.maximum(lo[None, :], edges[:-1, None])
    return np.clip(overlap, 0.0, None)


def _check_grid(rows, cols) -> tuple[int, int]:
    if not (isinstance(rows, (int, np.integer)) and isinstance(cols, (int, np.integer))) or rows < 1 or cols < 1:
        raise InterpError(f"A grid needs positive integer rows and cols, got rows={rows!r}, cols={cols!r}.")
    return int(rows), int(cols)


def boxes_mask(boxes, image_size: tuple[int, int], rows: int, cols: int, *, min_fraction: float = 0.25) -> torch.Tensor:
    """``bool[rows, cols]``: cells of an image of ``(width, height)`` that the union of pixel
    ``boxes`` (exclusive ends, clipped to the image) covers by at least ``min_fraction``."""
    width, height = image_size
    union = np.zeros((height, width), dtype=np.float64)
    for x0, y0, x1, y1 in boxes:
        union[max(0, y0) : min(height, y1), max(0, x0) : min(width, x1)] = 1.0
    return torch.from_numpy(_cell_coverage(union, rows, cols) >= min_fraction - 1e-9)


def _cell_coverage(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Fraction of each of ``rows x cols`` equal cells covered by ``mask`` (``[H, W]`` in 0..1); exact."""
    rows, cols = _check_grid(rows, cols)
    height, width = mask.shape[-2:]
    wy = _grid_weights(height, rows)
    wx = _grid_weights(width, cols)
    area = (height / rows) * (width / cols)
    return (wy @ mask @ wx.T) / area


def _patch_labels(sample: Sample, rows: int, cols: int, min_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = _check_grid(rows, cols)
    width, height = sample.image.size
    colour_out = torch.zeros(rows, cols, dtype=torch.long)
    shape_out = torch.zeros(rows, cols, dtype=torch.long)
    if not sample.objects:
        return colour_out, shape_out
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for k, obj in enumerate(sample.objects):
        _draw_shape(draw, obj["shape"], tuple(obj["box"]), k + 1)
    ids = np.asarray(canvas)
    masks = np.stack([(ids == k + 1) for k in range(len(sample.objects))]).astype(np.float64)
    coverage = _cell_coverage(masks, rows, cols)  # [K, rows, cols]
    best = coverage.argmax(axis=0)
    keep = coverage.max(axis=0) >= min_fraction - 1e-9
    colour_index = np.array([COLOUR_CLASSES.index(o["colour"]) for o in sample.objects])
    shape_index = np.array([SHAPE_CLASSES.index(o["shape"]) for o in sample.objects])
    colour_out = torch.from_numpy(np.where(keep, colour_index[best], 0).astype(np.int64))
    shape_out = torch.from_numpy(np.where(keep, shape_index[best], 0).astype(np.int64))
    return colour_out, shape_out


# -- counterfactual pairs --------------------------------------------------------------

#: the controlled changes :func:`counterfactual` makes
CHANGES: tuple[str, ...] = ("colour", "shape", "position", "remove", "distractor")
_CHANGE_CODE = {change: k for k, change in enumerate(CHANGES)}
_QUESTION_PATTERNS = {
    "attribute": re.compile(r"^What colour is the (\w+)\?$"),
    "identity": re.compile(r"^What shape is the (\w+) object\?$"),
    "existence": re.compile(r"^Is there a (\w+) (\w+)\?$"),
    "counting_shape": re.compile(r"^How many (\w+)s are there\?$"),
    "counting_colour": re.compile(r"^How many (\w+) objects are there\?$"),
    "spatial": re.compile(r"^Is the (\w+) (\w+) (left of|above) the (\w+) (\w+)\?$"),
}


def answer_of(question: str, objects: list[dict], image_size: int) -> tuple[str, list[int]] | None:
    """``(answer, relevant object indices)`` of a benchmark question about ``objects``, or
    None when the scene leaves it without one answer (the asked shape/colour absent or
    repeated, a spatial relation closer than the benchmark's threshold)."""

    def find(colour=None, shape=None):
        return [
            k
            for k, o in enumerate(objects)
            if (colour is None or o["colour"] == colour) and (shape is None or o["shape"] == shape)
        ]

    if m := _QUESTION_PATTERNS["attribute"].match(question):
        hits = find(shape=m.group(1))
        return (objects[hits[0]]["colour"], hits) if len(hits) == 1 else None
    if m := _QUESTION_PATTERNS["identity"].match(question):
        hits = find(colour=m.group(1))
        return (objects[hits[0]]["shape"], hits) if len(hits) == 1 else None
    if m := _QUESTION_PATTERNS["existence"].match(question):
        colour, shape = m.groups()
        hits = find(colour, shape)
        if hits:
            return "yes", hits
        return "no", [k for k, o in enumerate(objects) if o["colour"] == colour or o["shape"] == shape]
    if m := _QUESTION_PATTERNS["counting_shape"].match(question):
        hits = find(shape=m.group(1))
        return (str(len(hits)), hits) if 1 <= len(hits) <= _MAX_COUNT else None
    if m := _QUESTION_PATTERNS["counting_colour"].match(question):
        hits = find(colour=m.group(1))
        return (str(len(hits)), hits) if 1 <= len(hits) <= _MAX_COUNT else None
    if m := _QUESTION_PATTERNS["spatial"].match(question):
        c1, s1, relation, c2, s2 = m.groups()
        one, two = find(c1, s1), find(c2, s2)
        if len(one) != 1 or len(two) != 1:
            return None
        a = 0 if relation == "left of" else 1
        box_one, box_two = objects[one[0]]["box"], objects[two[0]]["box"]
        diff = (box_two[a] + box_two[a + 2]) / 2.0 - (box_one[a] + box_one[a + 2]) / 2.0
        threshold = image_size / 6.0
        if diff >= threshold:
            return "yes", [one[0], two[0]]
        if -diff >= threshold:
            return "no", [one[0], two[0]]
        return None
    raise InterpError(f"not a synthetic benchmark question: {question!r}")


@dataclass
class Counterfactual:
    """A scene and the same scene with one controlled change.

    ``original`` and ``changed`` are :class:`Sample` objects with the same question and
    the same background, clutter and other objects; ``changed.answer`` is the answer in
    the changed scene (equal to ``original.answer`` for the ``distractor`` control).
    ``changed_boxes`` are the boxes of every object drawn differently (old and new box
    when it moved), which hold every changed pixel; ``target`` is the index into
    ``original.objects`` of the object changed.
    """

    original: Sample
    changed: Sample
    change: str
    target: int
    description: str
    changed_boxes: list[Box] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.changed.id

    @property
    def answer_changed(self) -> bool:
        return normalize_answer(self.original.answer) != normalize_answer(self.changed.answer)

    def changed_mask(self, rows: int, cols: int, *, min_fraction: float = 0.0) -> torch.Tensor:
        """``bool[rows, cols]``: cells the changed objects' boxes cover by more than
        ``min_fraction`` of their area (0: any overlap), on any grid."""
        rows, cols = _check_grid(rows, cols)
        width, height = self.original.image.size
        union = np.zeros((height, width), dtype=np.float64)
        for x0, y0, x1, y1 in self.changed_boxes:
            union[max(0, y0) : min(height, y1), max(0, x0) : min(width, x1)] = 1.0
        coverage = _cell_coverage(union, rows, cols)
        return torch.from_numpy(coverage > min_fraction + 1e-9)

    def pixel_mask(self) -> np.ndarray:
        """``bool[H, W]``: the pixels that differ between the two images."""
        return (np.asarray(self.original.image) != np.asarray(self.changed.image)).any(axis=-1)


def counterfactual(sample: Sample, change: str = "colour", *, seed: int = 0) -> Counterfactual:
    """The same scene with one controlled change of ``change``:

    * ``"colour"`` / ``"shape"``: a relevant object (the one asked about) gets another
      colour / shape such that the answer changes;
    * ``"position"``: the first relevant object moves to a free place (for a spatial
      question, one that flips the answer where possible);
    * ``"remove"``: the first relevant object is removed;
    * ``"distractor"``: an object the question is not about gets another colour (or, if
      no colour keeps the answer, shape) such that the answer stays the same: the control.

    The scene stays well-formed (distinct colour-shape pairs, no overlaps) and the
    question answerable; the new answer is recomputed from the changed scene. The choice
    is deterministic from the sample (its random stream) and ``seed``. One clear error
    where the change cannot apply (e.g. recolouring the object of "What shape is the red
    object?" would leave no red object).
    """
    if change not in CHANGES:
        raise InterpError(f"unknown change {change!r}; use one of {', '.join(CHANGES)}")
    state = sample.render_state
    if state is None:
        raise InterpError(
            f"sample {sample.id} carries no render state: counterfactuals need samples drawn by SyntheticVQA"
        )
    size = int(state["image_size"])
    found = answer_of(sample.question, sample.objects, size)
    if found is None:  # pragma: no cover - generated samples always have one answer
        raise InterpError(f"sample {sample.id}: the question has no single answer in its own scene")
    relevant = found[1]
    entropy = int(state["rng"]["state"]["state"]) % (1 << 63)
    rng = np.random.default_rng([entropy, _CHANGE_CODE[change], int(seed)])
    objects = [dict(o) for o in sample.objects]
    # the control's new colour/shape is neither the answer nor a word of the question
    avoid = (
        {normalize_answer(sample.answer), *normalize_answer(sample.question).split()}
        if change == "distractor"
        else set()
    )
    candidates = _change_candidates(change, objects, relevant, size, rng, avoid)
    chosen = None
    for target, new_objects, description in candidates:
        result = answer_of(sample.question, new_objects, size)
        if result is None:
            continue
        same = normalize_answer(result[0]) == normalize_answer(sample.answer)
        if change == "distractor" and not same:
            continue
        if change == "position" and same:  # a move that keeps the answer is the fallback
            chosen = chosen or (target, new_objects, description, result)
            continue
        if change in ("colour", "shape", "remove") and same:
            continue
        chosen = (target, new_objects, description, result)
        break
    if chosen is not None:
        target, new_objects, description, (answer, new_relevant) = chosen
        boxes = [objects[target]["box"]]
        if change == "position":
            boxes.append(new_objects[target]["box"])
        image = _render_scene(_rng_from(state), new_objects, size, bool(state["clutter"]))
        changed = Sample(
            id=f"{sample.id}-{change}",
            image=image,
            question=sample.question,
            answer=answer,
            kind=sample.kind,
            boxes=[new_objects[k]["box"] for k in new_relevant],
            objects=new_objects,
            render_state=state,
        )
        return Counterfactual(sample, changed, change, target, description, boxes)
    raise InterpError(
        f"sample {sample.id} ({sample.kind}: {sample.question!r}) admits no {change!r} change "
        + (
            "that keeps the answer"
            if change == "distractor"
            else "that keeps the question answerable" + ("" if change == "position" else " and changes the answer")
        )
    )


def _rng_from(state: dict) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state["rng"]  # the setter copies
    return rng


def _change_candidates(change, objects, relevant, size, rng, avoid=frozenset()):
    """Every candidate ``(target, new objects, description)`` of a change, in a seeded order."""
    pairs = {(o["colour"], o["shape"]) for o in objects}
    if change == "distractor":
        targets = [k for k in range(len(objects)) if k not in relevant]
        fields = ("colour", "shape")
    else:
        targets = list(relevant[:1]) if change in ("position", "remove") else list(relevant)
        fields = (change,) if change in ("colour", "shape") else ()
    targets = [targets[i] for i in rng.permutation(len(targets))]
    for field_name in fields:
        values = COLOURS if field_name == "colour" else SHAPES
        for target in targets:
            old = objects[target]
            for i in rng.permutation(len(values)):
                value = values[i]
                if value == old[field_name] or value in avoid:
                    continue
                new = dict(old, **{field_name: value})
                if (new["colour"], new["shape"]) in pairs:
                    continue
                out = [dict(o) for o in objects]
                out[target] = new
                yield target, out, f"{old['colour']} {old['shape']} -> {new['colour']} {new['shape']}"
    if change == "remove":
        for target in targets:
            old = objects[target]
            yield (
                target,
                [dict(o) for k, o in enumerate(objects) if k != target],
                f"{old['colour']} {old['shape']} removed",
            )
    if change == "position":
        scale = size / 96.0
        gap, border = max(1, round(_GAP * scale)), max(1, round(_BORDER * scale))
        for target in targets:
            old = objects[target]
            x0, y0, x1, y1 = old["box"]
            side = x1 - x0
            others = np.array([o["box"] for k, o in enumerate(objects) if k != target], dtype=np.int64).reshape(-1, 4)
            cand = rng.integers(border, size - border - side + 1, size=(256, 2))
            nx, ny = cand[:, :1], cand[:, 1:]
            apart = (
                (nx + side + gap <= others[:, 0])
                | (others[:, 2] + gap <= nx)
                | (ny + side + gap <= others[:, 1])
                | (others[:, 3] + gap <= ny)
            ).all(axis=1)
            # far enough from where it was that the move is visible: no overlap with the old box
            moved = (nx[:, 0] + side <= x0) | (x1 <= nx[:, 0]) | (ny[:, 0] + side <= y0) | (y1 <= ny[:, 0])
            for j in np.flatnonzero(apart & moved):
                out = [dict(o) for o in objects]
                box = (int(cand[j, 0]), int(cand[j, 1]), int(cand[j, 0]) + side, int(cand[j, 1]) + side)
                out[target] = dict(old, box=box)
                yield target, out, f"{old['colour']} {old['shape']} moved {tuple(old['box'])} -> {box}"


#: question kinds each change is drawn from by :func:`counterfactual_pairs`
CHANGE_KINDS: dict[str, tuple[str, ...]] = {
    "colour": ("attribute",),
    "shape": ("identity",),
    "distractor": ("attribute", "identity"),
    "position": ("spatial",),
    "remove": ("existence", "counting"),
}


def counterfactual_pairs(
    dataset: SyntheticVQA,
    n: int = 60,
    changes: Sequence[str] = ("colour", "shape", "distractor"),
    *,
    start: int = 0,
    seed: int = 0,
) -> list[Counterfactual]:
    """``n`` counterfactuals, the changes taking turns; each from the next sample (from
    index ``start``) of a kind in :data:`CHANGE_KINDS` that admits it. Deterministic."""
    if isinstance(changes, str):
        changes = (changes,)
    unknown = [c for c in changes if c not in CHANGES]
    if not changes or unknown:
        raise InterpError(
            f"unknown change(s) {unknown or list(changes)!r}; use a non-empty subset of {', '.join(CHANGES)}"
        )
    if n < 1:
        raise InterpError(f"n={n}: ask for at least one counterfactual pair")
    cursor = {change: start for change in changes}
    out: list[Counterfactual] = []
    limit = len(dataset)
    while len(out) < n:
        change = changes[len(out) % len(changes)]
        while True:
            if cursor[change] >= limit:
                raise InterpError(f"the {dataset.split!r} split ran out of samples for {change!r} changes")
            sample = dataset[cursor[change]]
            cursor[change] += 1
            if sample.kind not in CHANGE_KINDS[change]:
                continue
            try:
                out.append(counterfactual(sample, change, seed=seed))
                break
            except InterpError:
                continue
    return out
