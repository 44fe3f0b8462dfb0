"""Tiny random SmolVLM: Idefics3-style tiles + global image, pixel-shuffle connector, Llama LM."""

from __future__ import annotations

from transformers import LlamaConfig, SmolVLMConfig, SmolVLMForConditionalGeneration
from transformers.models.smolvlm.configuration_smolvlm import SmolVLMVisionConfig
from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE
from transformers.models.smolvlm.processing_smolvlm import SmolVLMProcessor as _SmolVLMProcessor
from transformers.processing_utils import ProcessorMixin

from .common import TinySpec, finish
from .idefics3 import IMAGE_SPECIALS, SCALE_FACTOR, image_seq_len, tile_settings
from ..processors import token_id
from .tokenizer import byte_tokenizer

MODEL_TYPE = "smolvlm"


class SmolVLMProcessor(_SmolVLMProcessor):
    """The HF SmolVLM processor for images and text only.

    The real constructor requires a video processor (its class needs torchvision)
    and the ``num2words`` package (used only to word video prompts); neither is
    needed for images. This sets the same attributes and leaves the image/text
    processing to the unmodified HF methods.
    """

    def __init__(self, image_processor, tokenizer, image_seq_len: int = 169, chat_template=None, **kwargs):
        self.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
        self.image_token = getattr(tokenizer, "image_token", "<image>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token", "<end_of_utterance>")
        self.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
        self.image_seq_len = image_seq_len
        self.video_token = getattr(tokenizer, "video_token", "<video>")
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        # the HF override only adds video sampling defaults read off the video processor
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)


def build(spec: TinySpec):
    tokenizer = byte_tokenizer(("<|im_start|>", *IMAGE_SPECIALS), image_token="<image>", template=DEFAULT_CHAT_TEMPLATE)
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessorPil(**tile_settings(spec)),
        tokenizer=tokenizer,
        image_seq_len=image_seq_len(spec),
        chat_template=tokenizer.chat_template,
    )
    config = SmolVLMConfig(
        vision_config=SmolVLMVisionConfig(**spec.vit_kwargs()),
        text_config=LlamaConfig(**spec.llama_kwargs(len(tokenizer))),
        scale_factor=SCALE_FACTOR,
        image_token_id=token_id(tokenizer, "<image>"),
    )
    return finish(SmolVLMForConditionalGeneration, config, processor, spec)
