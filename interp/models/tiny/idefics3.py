"""Tiny random Idefics3: SigLIP-style tower, pixel-shuffle connector + Llama LM.

Images are split into square tiles of ``spec.image_size`` px plus a global image
(the processor's real logic), so a small non-square image gives several tiles.
"""

from __future__ import annotations

from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, LlamaConfig
from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

from .common import TinySpec, finish
from ..processors import token_id
from .tokenizer import byte_tokenizer

MODEL_TYPE = "idefics3"

SCALE_FACTOR = 2

# The specials of the real Idefics3/SmolVLM tokenizers: tile separators and tags.
IMAGE_SPECIALS = (
    "<fake_token_around_image>",
    "<global-img>",
    "<end_of_utterance>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
)


def idefics_template(bos: str = "") -> str:
    """The real Idefics3/SmolVLM template: ``User:<image>question<end_of_utterance>\\nAssistant:``."""
    return (
        bos + "{% for message in messages %}{{ message['role'] | capitalize }}"
        "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
        "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
        "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
        "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    )


def tile_settings(spec: TinySpec) -> dict:
    """Tiles of ``image_size`` px; images first resized to a longest edge of 4 tiles (as 1456 = 4 x 364)."""
    return dict(
        size={"longest_edge": 4 * spec.image_size},
        max_image_size={"longest_edge": spec.image_size},
        do_image_splitting=True,
    )


def image_seq_len(spec: TinySpec) -> int:
    return (spec.image_size // spec.patch_size) ** 2 // SCALE_FACTOR**2


def build(spec: TinySpec):
    tokenizer = byte_tokenizer(IMAGE_SPECIALS, image_token="<image>", template=idefics_template("<s>"))
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(**tile_settings(spec)),
        tokenizer=tokenizer,
        image_seq_len=image_seq_len(spec),
        chat_template=tokenizer.chat_template,
    )
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(**spec.vit_kwargs()),
        text_config=LlamaConfig(**spec.llama_kwargs(len(tokenizer))),
        scale_factor=SCALE_FACTOR,
        image_token_id=token_id(tokenizer, "<image>"),
    )
    return finish(Idefics3ForConditionalGeneration, config, processor, spec)
