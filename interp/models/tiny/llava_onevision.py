"""Tiny random LLaVA-OneVision: SigLIP tower (4x4 patches per 32 px tile) + Qwen2 LM.

Like the real checkpoints it keeps every SigLIP token (``"full"``; SigLIP has no CLS)
and uses ``anyres_max_9``; the pinpoints are multiples of the tile, so a 48x64 image
in a group of one (any flat image list) is tiled 2x2 (6x8 unpadded grid + 4x4 base grid).
"""

from __future__ import annotations

from contextlib import contextmanager
from unittest import mock

from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor
from transformers.processing_utils import ProcessorMixin
from transformers.video_processing_utils import VideoProcessorMixin

from .common import TinySpec, finish
from ..processors import token_id
from .tokenizer import byte_tokenizer, chat_template

MODEL_TYPE = "llava_onevision"


@contextmanager
def video_processor_check_without_torchvision():
    """Let a processor accept its video processor when torchvision is absent.

    ``ProcessorMixin.__init__`` checks every sub-processor's class by looking the base
    class up through ``transformers``' auto mappings; without torchvision the video
    mapping is a placeholder and the lookup raises, even though the video processor
    itself builds (it is only unusable for actual videos). During construction only,
    check the video processor against ``VideoProcessorMixin`` directly.
    """
    original = ProcessorMixin.check_argument_for_proper_class

    def check(self, argument_name, argument):
        if argument_name == "video_processor":
            if not isinstance(argument, VideoProcessorMixin):
                raise TypeError(f"Received a {type(argument).__name__} for argument video_processor")
            return VideoProcessorMixin
        return original(self, argument_name, argument)

    with mock.patch.object(ProcessorMixin, "check_argument_for_proper_class", check):
        yield


def pinpoints(tile: int) -> list[list[int]]:
    return [[tile * i, tile * j] for i in range(1, 4) for j in range(1, 4)]


def build(spec: TinySpec):
    tile = spec.image_size
    side = tile // spec.patch_size
    grid_pinpoints = pinpoints(tile)
    tokenizer = byte_tokenizer(image_token="<image>", video_token="<video>", template=chat_template("<image>\n"))
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": tile, "width": tile},
        image_grid_pinpoints=grid_pinpoints,
    )
    with video_processor_check_without_torchvision():
        processor = LlavaOnevisionProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=LlavaOnevisionVideoProcessor(),
            num_image_tokens=side * side,
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9",
            chat_template=tokenizer.chat_template,
        )
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(
            **spec.vit_kwargs(image_size=tile),
            vision_use_head=False,
        ),
        text_config=Qwen2Config(**spec.llama_kwargs(len(tokenizer))),
        image_token_index=token_id(tokenizer, "<image>"),
        video_token_index=token_id(tokenizer, "<video>"),
        image_grid_pinpoints=grid_pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    return finish(LlavaOnevisionForConditionalGeneration, config, processor, spec)
