"""Errors the toolkit raises on bad input.

Every error a user can cause (a wrong model name, a missing input, a layer out of
range, an unreadable image) is an :class:`InterpError` whose message is one line
that says what is wrong and what to do. The CLI prints that line without a
traceback.
"""

from __future__ import annotations


class InterpError(ValueError):
    """A user-facing error with a one-line, actionable message.

    Every error a user can cause is one (the CLI prints its line without a traceback).
    Subclasses in :mod:`interp.errors` say what kind: ``InputError``, ``LayerIndexError``,
    ``HookNameError``, ``UnsupportedModelError``.

    Args:
        message: what is wrong and what to do; its whitespace (newlines included) is
            collapsed into single spaces, so the message is one line.
    """

    def __init__(self, message: str) -> None:
        one_line = " ".join(str(message).split())
        super().__init__(one_line)


class UnsupportedModelError(InterpError):
    """The model's ``model_type`` has no family adapter."""


class InputError(InterpError):
    """Model inputs are missing, inconsistent or unreadable."""


class LayerIndexError(InterpError, IndexError):
    """A layer index outside ``0 .. n_layers - 1``."""


class HookNameError(InterpError, KeyError):
    """A hook name that does not resolve onto the model."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]
