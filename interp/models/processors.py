"""Loading HF processors where the video half of a processor cannot load.

Several VLM processors (Qwen2/2.5/3-VL, InternVL, SmolVLM) bundle a video processor
whose class needs torchvision; without it, even an image-only use of the processor
fails. :func:`load_processor` falls back to the same processor class with the video
processor left out, so images and text still go through the unmodified HF code.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

from ..errors import InterpError

#: transformers' note (logged once per process, by ``transformers.utils.import_utils``)
#: that ``XImageProcessor`` uses its PIL twin because torchvision is absent. That twin is
#: what interp wants (no torchvision dependency), so the note says nothing to our users.
TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back to"


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


@contextmanager
def quiet_torchvision_fallback():
    """While processors are built: drop exactly transformers' torchvision-fallback note
    (a filter on the one logger that emits it, removed on exit; nothing else is hidden)."""
    logger = logging.getLogger("transformers.utils.import_utils")
    drop = _DropMessage(TORCHVISION_FALLBACK)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def image_only_processor(processor_class):
    """``processor_class`` without its video processor (same class name, same HF code)."""

    class ImageOnly(processor_class):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            processor_class.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    ImageOnly.__name__ = ImageOnly.__qualname__ = processor_class.__name__
    ImageOnly.__module__ = __name__
    return ImageOnly


def _processor_class_name(name: str) -> str | None:
    for filename in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = Path(name) / filename
        if path.exists():
            value = json.loads(path.read_text()).get("processor_class")
            if value:
                return value
    return None


def load_processor(name: str):
    """``AutoProcessor.from_pretrained(name)``, or its image-only variant when the
    video processor cannot be built here."""
    with quiet_torchvision_fallback():
        return _load_processor(name)


def _load_processor(name: str):
    import transformers
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(name)
    except (OSError, ImportError, ValueError, TypeError) as error:
        first_error = str(error).splitlines()[0] if str(error) else type(error).__name__
        class_name = _processor_class_name(name)
        processor_class = getattr(transformers, class_name, None) if class_name else None
        if processor_class is None:
            raise InterpError(f"cannot load the processor of {name!r}: {first_error}") from None
        try:
            return image_only_processor(processor_class).from_pretrained(name)
        except Exception:  # noqa: BLE001 - report the original, more informative error
            raise InterpError(f"cannot load the processor of {name!r}: {first_error}") from None


def token_id(tokenizer, token: str) -> int:
    """The id of one token (``convert_tokens_to_ids`` of a single token)."""
    value = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(value, int):
        raise ValueError(f"{token!r} is not one token of this tokenizer")
    return value
