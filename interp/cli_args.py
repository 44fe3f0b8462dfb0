"""Command-line pieces every ``interp`` command shares: how a model is named and loaded
(``--model``, ``--dtype``, ``--device-map``, ``--attn-implementation``, lmms-eval's
``--model_args``), argument types that fail in one line, and a parser whose errors are
one line. Imports nothing heavy: ``interp --help`` must stay fast."""

from __future__ import annotations

import argparse
import sys

from .errors import InterpError

#: lmms-eval's ``--model_args`` keys -> interp.load keyword (or "pretrained": the model)
MODEL_ARG_KEYS = {
    "pretrained": "pretrained",
    "dtype": "dtype",
    "torch_dtype": "dtype",
    "device_map": "device_map",
    "attn_implementation": "attn_implementation",
}


class Parser(argparse.ArgumentParser):
    """``argparse`` with one-line errors: ``error: <prog>: <what> (see <prog> --help)``, exit 2."""

    def error(self, message: str):  # noqa: D102 - argparse API
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _int_at_least(text: str, minimum: int, wanted: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {wanted} ({minimum} or more), got {value}")
    return value


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer >= 1 (``--limit 0`` and ``--limit -3`` refused)."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An ``argparse`` type: an integer >= 0 (0 switches a section off)."""
    return _int_at_least(text, 0, "a non-negative integer")


def decode_batch(text: str) -> int | str:
    """An ``argparse`` type for ``--decode-batch``: ``auto``, ``all`` (every condition at once) or an
    integer >= 1."""
    if text in ("auto", "all"):
        return text
    return _int_at_least(text, 1, "a positive integer, 'auto' or 'all'")


def non_empty(text: str) -> str:
    """An ``argparse`` type: a string with something in it (``--question ""`` refused)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def add_model_args(
    parser: argparse.ArgumentParser, *, default: str | None = "organism", dtype: bool = True, model: bool = True
) -> None:
    """``--model`` and how to load it. ``dtype=False`` for commands that read the config
    only; ``model=False`` for commands that name their model otherwise."""
    if model:
        parser.add_argument(
            "--model",
            default=default,
            help="a HF id, a local model dir, tiny:<model_type> or organism"
            + (f" (default: {default})" if default else ""),
        )
    if dtype:
        group = parser.add_argument_group("loading (for large models on GPUs)")
        group.add_argument(
            "--dtype", default=None, help="float16, bfloat16, float32 or auto (default: the checkpoint's)"
        )
        group.add_argument(
            "--device-map",
            "--device_map",
            dest="device_map",
            default=None,
            help="HF accelerate placement, e.g. auto or cuda:0 (default: CPU)",
        )
        group.add_argument(
            "--attn-implementation",
            "--attn_implementation",
            dest="attn_implementation",
            default=None,
            choices=["eager", "sdpa", "flash_attention_2"],
            help="attention kernel (default: the checkpoint's; every hook works under sdpa)",
        )
        group.add_argument(
            "--model_args",
            "--model-args",
            dest="model_args",
            default=None,
            help="lmms-eval style: pretrained=ID,dtype=bfloat16,device_map=auto,attn_implementation=sdpa",
        )


def parse_model_args(text: str | None) -> dict:
    """``"pretrained=x,dtype=bfloat16"`` -> ``{"pretrained": "x", "dtype": "bfloat16"}``."""
    out: dict = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = part.partition("=")
        if not sep or not value:
            raise InterpError(f"--model_args entry {part!r} is not key=value")
        if key not in MODEL_ARG_KEYS:
            raise InterpError(f"--model_args key {key!r} is not used by interp; use {', '.join(MODEL_ARG_KEYS)}")
        out[MODEL_ARG_KEYS[key]] = value
    return out


def model_and_kwargs(args: argparse.Namespace) -> tuple[str, dict]:
    """``(model name, interp.load keyword arguments)`` from the parsed command line."""
    name = parse_model_args(getattr(args, "model_args", None)).get("pretrained")
    model = getattr(args, "model", None)
    if name and model and model != name:
        # lmms-eval's --model names a wrapper class (e.g. llava); interp reads the family from the checkpoint
        print(
            f"note: loading pretrained={name}; interp picks the family from its config (--model {model} unused)",
            file=sys.stderr,
        )
    name = name or model
    if not name:
        raise InterpError("no model given: pass --model ID (or --model_args pretrained=ID)")
    return name, load_kwargs(args)


def load_kwargs(args: argparse.Namespace) -> dict:
    """The :func:`interp.load` keywords (dtype, device_map, attn_implementation) of the
    parsed command line; explicit flags and ``--model_args`` must agree where both are given."""
    extra = parse_model_args(getattr(args, "model_args", None))
    kwargs = {}
    for key in ("dtype", "device_map", "attn_implementation"):
        flag = getattr(args, key, None)
        if flag is not None and key in extra and extra[key] != flag:
            raise InterpError(f"--{key.replace('_', '-')} {flag} and --model_args {key}={extra[key]} disagree")
        value = flag if flag is not None else extra.get(key)
        if value is not None:
            kwargs[key] = value
    return kwargs


__all__ = [
    "Parser",
    "add_model_args",
    "load_kwargs",
    "model_and_kwargs",
    "non_empty",
    "parse_model_args",
    "positive_int",
]
