"""One-line checks of user input, shared by the API and the command line.

Each function returns the value it accepts (normalised) or raises an
:class:`interp.errors.InterpError` subclass whose message says what is wrong and what
to pass instead. They import nothing heavy, so the CLI can call them before loading
a model.
"""

from __future__ import annotations

import numbers
import operator
import os
from typing import Any

from .errors import InputError, InterpError, LayerIndexError

URL_SCHEMES = ("http://", "https://", "ftp://", "s3://", "gs://", "hf://", "data:")


def positive_int(value: Any, what: str) -> int:
    """``value`` as an int >= 1 (bools and non-integral numbers refused)."""
    return _int_at_least(value, 1, what, "a positive integer (1 or more)")


def non_negative_int(value: Any, what: str) -> int:
    """``value`` as an int >= 0 (0 switches something off; bools and non-integral numbers refused)."""
    return _int_at_least(value, 0, what, "a non-negative integer (0 or more)")


def _int_at_least(value: Any, least: int, what: str, words: str) -> int:
    kind = words.split(" (")[0]
    if isinstance(value, bool):
        raise InputError(f"{what} must be {kind}, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise InputError(f"{what} must be {kind}, got {value!r}") from None
    if number < least:
        raise InputError(f"{what} must be {words}, got {number}")
    return number


#: the floating dtypes a model may be loaded in (names as ``torch`` spells them), and ``auto``
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64", "float", "half", "double", "auto")
#: ``device_map`` strings accelerate takes besides a device (``cpu``, ``cuda``, ``cuda:N``, ``mps``)
PLACEMENTS = ("auto", "balanced", "balanced_low_0", "sequential")


def dtype(value: Any) -> Any:
    """A dtype to load a model in: None, ``"auto"``, a floating dtype's name or a floating
    ``torch.dtype`` (integer and other dtypes refused: weights are not quantised here)."""
    if value is None or value in FLOAT_DTYPES:
        return value
    if getattr(value, "is_floating_point", False) is True:  # a floating torch.dtype
        return value
    raise InputError(f"unknown or non-floating dtype {value!r}; use float16, bfloat16, float32 or auto")


def device_map(value: Any) -> Any:
    """A ``device_map``: None, a placement (``auto``, ``balanced``, ...), a device (``cpu``,
    ``cuda``, ``cuda:N``, ``mps``, an int) or a dict of module -> device; a CUDA device is
    refused where torch sees none."""
    if value is None or value in PLACEMENTS or isinstance(value, dict):
        return value
    text = str(value)
    kind, _, index = text.partition(":")
    if isinstance(value, bool) or not (
        isinstance(value, int) or (kind in ("cpu", "cuda", "mps", "xpu") and (not index or index.isdigit()))
    ):
        raise InputError(f"unknown device_map {value!r}; use auto, cpu, cuda, cuda:N or a dict of module -> device")
    if isinstance(value, int) or kind == "cuda":
        import torch

        wanted = int(index or 0) if kind == "cuda" else int(value)
        if not torch.cuda.is_available():
            raise InputError(
                f"device_map {value!r} needs a CUDA GPU and torch sees none here "
                f"(torch {torch.__version__}); leave it out to run on the CPU"
            )
        if wanted >= torch.cuda.device_count():
            raise InputError(f"device_map {value!r}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return value


def max_new_tokens(value: Any) -> int:
    """For ``vlm.run(..., generate=True, max_new_tokens=N)``: N >= 1."""
    return positive_int(value, "max_new_tokens")


def layer_index(layer: Any) -> int:
    """A layer index as an int: Python ints, NumPy integers and one-element integer
    tensors pass; ``1.5``, ``"3"``, ``True`` are refused (never truncated to a layer)."""
    if isinstance(layer, bool):
        raise LayerIndexError(f"layer index must be an integer, got {layer!r}")
    try:
        return operator.index(layer)
    except TypeError:
        raise LayerIndexError(f"layer index must be an integer, got {layer!r} ({type(layer).__name__})") from None


def layer_list(layers: Any) -> list[int] | str:
    """``"all"`` or the layers of an int / iterable of ints, each checked by :func:`layer_index`
    (range checks stay with the model, which knows its depth)."""
    if isinstance(layers, str):
        if layers != "all":
            raise LayerIndexError(f"layers must be an int, an iterable of ints or 'all', got {layers!r}")
        return layers
    if isinstance(layers, numbers.Number) or getattr(layers, "ndim", None) == 0:  # one layer
        return [layer_index(layers)]
    try:
        items = list(layers)
    except TypeError:
        raise LayerIndexError(f"layers must be an int, an iterable of ints or 'all', got {layers!r}") from None
    return [layer_index(layer) for layer in items]


def scale(value: Any) -> Any:
    """For ``ScaleImageTokens(scale=...)``: a real number, a tensor / array of numbers, or
    a callable ``ctx -> scale``."""
    if callable(value) or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
        return value
    kind = getattr(getattr(value, "dtype", None), "kind", None)  # NumPy arrays
    if (isinstance(kind, str) and kind in "iuf") or _is_number_tensor(value):
        return value
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
    ):
        return value
    raise InputError(f"scale must be a number (e.g. 1e-9 or 0), a tensor of numbers or a callable(ctx), got {value!r}")


def _is_number_tensor(value: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(value, torch.Tensor) and not value.dtype.is_complex and value.dtype != torch.bool


def prepared(value: Any) -> Any:
    """For ``vlm.run(prepared, ...)``: one :class:`interp.inputs.Prepared`."""
    from .inputs import Prepared

    if isinstance(value, Prepared):
        return value
    if isinstance(value, dict):
        raise InputError(
            "vlm.run takes a Prepared, not a dict: use vlm.prepare(image, question), "
            "or vlm.from_inputs(inputs) for processor outputs you already have"
        )
    if isinstance(value, (list, tuple)):
        raise InputError(
            f"vlm.run takes one Prepared, got a {type(value).__name__} of {len(value)}: "
            "run them one at a time (for p in prepared: vlm.run(p, ...)) or use an analysis "
            "that takes many samples (interp.analysis)"
        )
    raise InputError(f"vlm.run takes a Prepared from vlm.prepare(image, question), got {type(value).__name__}")


def image_reference(image: Any) -> Any:
    """Refuse URLs before they are mistaken for paths (interp never downloads)."""
    if isinstance(image, str) and image.strip().lower().startswith(URL_SCHEMES):
        raise InputError(
            f"image URLs are not fetched ({image[:60]}): download the file and pass its path, or pass a PIL image"
        )
    return image


def question(text: Any, what: str = "the question") -> str:
    """A non-empty question string."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{what} must be a non-empty string, got {text!r}")
    return text


def ndif_api_key() -> str:
    """The NDIF API key (``NDIF_API_KEY``, else nnsight's saved config), or one clear error.
    Call before loading anything for ``remote=True``."""
    key = os.environ.get("NDIF_API_KEY")
    if key:
        return key
    try:
        from nnsight import CONFIG

        key = CONFIG.API.APIKEY
    except Exception:  # noqa: BLE001 - no nnsight config is the same as no key
        key = None
    if not key:
        raise InterpError(
            "remote runs need an NDIF API key: set NDIF_API_KEY (see https://nnsight.net) and use a model NDIF hosts"
        )
    return key


__all__ = [
    "image_reference",
    "layer_index",
    "layer_list",
    "max_new_tokens",
    "ndif_api_key",
    "positive_int",
    "prepared",
    "question",
    "scale",
]
