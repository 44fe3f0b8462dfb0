"""Helpers every command shares: checked output directories, layer lists, the scene size."""

from __future__ import annotations

from pathlib import Path

from ..errors import InterpError


def _output_dir(path: str | Path) -> Path:
    """``path`` checked writable as a directory (created if missing): one line if not, before
    any model loads or anything is computed (:func:`interp.outputs.check_output`)."""
    from ..outputs import check_output

    return check_output(Path(path), "dir", lock=False)


def _int_list(text: str | None):
    """``"all"``/None as given, else a comma-separated list of integers (one clear error otherwise)."""
    if text is None or text == "all":
        return text
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InterpError(f"{text!r} is not 'all' or a comma-separated list of layer numbers") from None


def _load_samples(dataset: str, data_dir: str | None, split: str | None, image_size: int):
    """``(samples, label)`` for ``--dataset``: the synthetic benchmark or an evaluation task."""
    if dataset == "synthetic":
        from ..data.synthetic import SyntheticVQA

        split = split or "test"
        return SyntheticVQA(split, seed=0, image_size=image_size), f"synthetic:{split}"
    from ..data.tasks import load_task

    return load_task(dataset, data_dir, split=split), dataset
