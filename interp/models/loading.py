"""``interp.load``: a HF model id, a local directory, a tiny test model, or a built model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import InterpError
from .adapters import adapter_for
from .vlm import VLM

TASK = "image-text-to-text"


def _wrap(model: torch.nn.Module, processor: Any):
    from nnsight import TransformersModel

    return TransformersModel(model, processor=processor, task=TASK)


def _resolve_dtype(dtype: Any) -> Any:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        return getattr(torch, dtype)
    except AttributeError:
        raise InterpError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16', 'float16' or 'auto'") from None


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _check_hub_reachable(name: str) -> None:
    """For a hub id not in the local cache: one line at once when offline mode is set or the
    hub's host does not resolve (instead of the hub client's retries, ~25 s)."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return
    except ValueError:  # not a valid repo id: the config loader says so
        return
    offline = [v for v in OFFLINE_VARIABLES if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")]
    if offline:
        raise InterpError(
            f"{name!r} is not a local directory nor in the hub cache, and {offline[0]}="
            f"{os.environ[offline[0]]} is set (offline mode): pass a local model directory, or unset it "
            "on a machine with hub access"
        )
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # the proxy resolves the host
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as error:
        raise InterpError(
            f"{name!r} is not a local directory nor in the hub cache, and {host} cannot be reached "
            f"({error}): pass a local model directory, or run where the hub is reachable"
        ) from None


def resolve_config(name: str) -> tuple[str | None, str, Any]:
    """``(label, path or id, config)`` of a model name (organism variant, local directory
    or HF id) without loading any weights; ``label`` is the organism variant's name."""
    from transformers import AutoConfig

    from .organism import VARIANTS, organism_dir

    label = None
    if name in VARIANTS:
        label, name = name, str(organism_dir(name))
    elif name.startswith("organism") and "/" not in name and not Path(name).exists():
        raise InterpError(f"unknown organism {name!r}; the shipped organisms are {', '.join(VARIANTS)}")

    local = Path(name).expanduser()
    if Path(name).is_absolute() or name.startswith((".", "~")) or local.exists():
        if not local.is_dir():
            raise InterpError(f"model directory not found: {local}")
        if not (local / "config.json").is_file():
            raise InterpError(
                f"no config.json in model directory {local}: pass a directory written by "
                "save_pretrained (config.json, weights, processor files), a HF id or 'organism'"
            )
        name = str(local)
    else:
        _check_hub_reachable(name)
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise InterpError(f"cannot load a model config from {name!r}: {str(error).splitlines()[0]}") from None
    return label, name, config


def load_config(name: str) -> Any:
    """The HF config of a model (``tiny:<type>``, organism, directory or HF id), weights untouched."""
    if name.startswith("tiny:"):
        from .tiny import build_tiny

        adapter_for(name.split(":", 1)[1])
        return build_tiny(name.split(":", 1)[1])[0].config  # tiny: built in milliseconds
    return resolve_config(name)[2]


def load(
    name_or_path: Any = "tiny:llava",
    processor: Any = None,
    *,
    dtype: Any = None,
    device_map: Any = None,
    attn_implementation: str | None = None,
    remote: bool | str = False,
) -> VLM:
    """Load a vision-language model for interpretability work.

    Args:
        name_or_path: one of

            * a HF model id (``"llava-hf/llava-1.5-7b-hf"``; needs hub access or a local cache),
            * a local directory holding a HF model and its processor,
            * ``"organism"`` / ``"organism-frozen"``: the embedded model organism (offline),
            * ``"tiny:<model_type>"``: a tiny random model of that family, built offline,
            * an already-built HF model, with ``processor`` given.
        processor: the HF processor; None: loaded with the model (required with an
            already-built model).
        dtype: the weights' floating dtype (``"float16"``, ``"bfloat16"``, ``"float32"``,
            ``"auto"`` or a ``torch.dtype``); None: transformers' default.
        device_map: as in HF ``from_pretrained``: a placement (``"auto"`` ...), a device
            (``"cpu"``, ``"cuda:0"``, an int) or a dict of module -> device.
        attn_implementation: defaults to the checkpoint's (SDPA for most): every hook,
            attention pattern included, works under SDPA.
        remote: True runs every trace on NDIF (key from ``NDIF_API_KEY``); the model is then
            built on the meta device here and never loaded locally. ``"local"`` runs traces
            through nnsight's local simulation of the remote path.

    Returns:
        The loaded :class:`~interp.models.vlm.VLM`.

    Raises:
        InterpError: the model cannot be found or loaded (no such directory, no
            ``config.json``, hub unreachable or offline), a built model without its
            processor, or bad ``dtype`` / ``device_map``.
        UnsupportedModelError: the model's family has no adapter.

    Example:
        ```python
        vlm = interp.load("tiny:llava")  # offline, in seconds
        vlm = interp.load("llava-hf/llava-1.5-7b-hf", dtype="bfloat16", device_map="auto")
        ```
    """
    from .. import validate

    dtype, device_map = validate.dtype(dtype), validate.device_map(device_map)
    if isinstance(name_or_path, torch.nn.Module):
        if processor is None:
            raise InterpError("loading an already-built model needs its processor: load(model, processor)")
        model: Any = name_or_path
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
        adapter = adapter_for(model.config)
        return VLM(_wrap(model, processor), processor, adapter, remote=remote)

    if not isinstance(name_or_path, (str, Path)):
        raise InterpError(f"cannot load {type(name_or_path).__name__}; pass a model id, a directory or a model")
    name = str(name_or_path)

    if name.startswith("tiny:"):
        from .tiny import build_tiny

        model_type = name.split(":", 1)[1]
        adapter_for(model_type)  # one clear error for an unknown family
        model, tiny_processor = build_tiny(model_type, attn_implementation=attn_implementation or "sdpa")
        if dtype not in (None, "auto"):
            model = model.to(_resolve_dtype(dtype))
        return VLM(_wrap(model, tiny_processor), tiny_processor, adapter_for(model.config), name=name, remote=remote)

    from transformers import AutoModelForImageTextToText

    from .processors import load_processor

    label, name, config = resolve_config(name)
    adapter = adapter_for(config)  # unsupported families fail here, before any weights load
    if processor is None:
        processor = load_processor(name)

    if remote is True:
        from nnsight import TransformersModel

        attn = {"attn_implementation": attn_implementation} if attn_implementation else {}
        wrapped = TransformersModel(name, processor=processor, task=TASK, dispatch=False, **attn)
        return VLM(wrapped, processor, adapter, name=name, remote=True)

    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = _resolve_dtype(dtype)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(name, **kwargs).eval()
    return VLM(_wrap(model, processor), processor, adapter, name=label or name, remote=remote)
