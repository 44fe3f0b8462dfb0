"""Shared fixtures: tiny models of every family, a test image, plain-PyTorch references."""

from __future__ import annotations

import json
import os
from pathlib import Path
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from interp.threads import cores

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*requires torchvision.*")


#: (height, width) of the test images: small, non-square, so every family resizes or tiles it
TEST_IMAGE_SIZE = (48, 64)


def make_image(height: int = 48, width: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    array = (rng.uniform(0, 1, size=(height, width, 3)) * 255).astype("uint8")
    return Image.fromarray(array)


@pytest.fixture(scope="session")
def image() -> Image.Image:
    return make_image()


_CACHE: dict = {}


def tiny_vlm(model_type: str, attn: str = "eager"):
    """A cached tiny VLM (weights are never modified by the tests)."""
    import interp

    key = (model_type, attn)
    if key not in _CACHE:
        _CACHE[key] = interp.load(f"tiny:{model_type}", attn_implementation=attn)
    return _CACHE[key]


def sample_for(vlm, image=None, question: str = "What colour is the square?"):
    size = TEST_IMAGE_SIZE
    return vlm.prepare(image if image is not None else make_image(*size), question)


#: pytest-xdist workers (``make test`` runs ``-n 2``): each takes its share of the cores' threads
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, cores() // _WORKERS, torch.get_num_threads())))
# the command line sizes its threads only when this is unset (interp.threads); the tests keep theirs
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


# -- never pip-install from the test suite -------------------------------------
# TransformerLens's bridge pip-installs torchvision at run time when a processor will
# not load (``_ensure_torchvision`` in transformer_lens/model_bridge/sources/
# transformers/helpers.py runs ``uv pip install`` / ``python -m pip install`` through
# ``subprocess``). For the whole session every subprocess goes through this guard: a
# pip install is refused (PermissionError) and recorded; anything else runs as usual.


def _is_pip_install(args) -> bool:
    import os

    words = os.fsdecode(args).split() if isinstance(args, (str, bytes)) else [os.fsdecode(a) for a in args]
    names = [os.path.basename(word) for word in words]
    return "install" in names and any(name == "pip" or name.startswith("pip3") for name in names)


@pytest.fixture(scope="session", autouse=True)
def pip_install_attempts():
    """The pip installs something tried this session (refused); tests assert it stays empty."""
    import subprocess

    attempts: list = []

    class NoPipInstallPopen(subprocess.Popen):
        def __init__(self, args, *rest, **kwargs):
            if _is_pip_install(args):
                attempts.append(args)
                raise PermissionError(f"the test suite must not pip-install anything: {args!r}")
            super().__init__(args, *rest, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess, "Popen", NoPipInstallPopen)
        yield attempts


def report_numbers(value, path: str = "") -> dict:
    """Every number of a report, by its path (timings and pass counts aside): for comparing runs."""
    if path.startswith(("timings_s", "counts")):
        return {}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(report_numbers(item, f"{path}.{key}" if path else str(key)))
        return out
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            out.update(report_numbers(item, f"{path}[{i}]"))
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {path: float(value)}
    return {}


def assert_reports_close(a: dict, b: dict, atol: float = 0.0) -> None:
    """Two reports have the same numbers (NaN where the other has NaN), within ``atol``."""
    import math

    x, y = report_numbers(a), report_numbers(b)
    assert x.keys() == y.keys(), sorted(set(x) ^ set(y))[:5]
    bad = [
        (key, x[key], y[key])
        for key in x
        if not (math.isnan(x[key]) and math.isnan(y[key])) and not abs(x[key] - y[key]) <= atol
    ]
    assert not bad, bad[:5]


# -- helpers shared by several test modules -------------------------------------------------


def square_items(vlm, n: int = 2) -> list:
    """``n`` items of a plain image each, asking for the colour of a square in its top-left quarter."""
    from interp.analysis.items import Item

    size = TEST_IMAGE_SIZE
    return [
        Item(
            id=str(i),
            image=make_image(*size, seed=i),
            question="What colour is the square?",
            answers=("red",),
            kind="attribute",
            boxes=((0, 0, size[1] // 2, size[0] // 2),),
        )
        for i in range(n)
    ]


def cli(capsys, *argv) -> tuple[int, str]:
    """Exit code and stderr of ``interp argv``; argparse exits are caught."""
    from interp.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def one_line(text: str) -> str:
    """The one non-empty line of ``text`` (a command's error output)."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def colour(i: int) -> tuple[int, int, int]:
    """The ``i``-th test image colour (distinct for small ``i``)."""
    return (40 * i % 256, 200, 255 - 30 * i % 256)


def save_image(path: Path, i: int) -> Path:
    """A small plain image of :func:`colour` ``i`` at ``path`` (directories made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), colour(i)).save(path)
    return path


def write_pope(root: Path, categories=("adversarial", "popular", "random")) -> Path:
    """POPE's official layout under ``root``: two questions per category, their two COCO images."""
    for category in categories:
        lines = [
            {
                "question_id": 1,
                "image": "COCO_val2014_000000310196.jpg",
                "text": "Is there a snowboard in the image? ",
                "label": "yes",
            },
            {
                "question_id": 2,
                "image": "COCO_val2014_000000210789.jpg",
                "text": f"Is there a {category} dog in the image?",
                "label": "no",
            },
        ]
        path = root / "coco" / f"coco_pope_{category}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    save_image(root / "val2014" / "COCO_val2014_000000310196.jpg", 11)
    save_image(root / "val2014" / "COCO_val2014_000000210789.jpg", 12)
    return root
