"""Random models with the real shapes of four published VLM checkpoints, built offline.

Nothing is downloaded: the widths, heads, vision towers and processor settings below are
those of the checkpoints' published ``config.json`` / ``preprocessor_config.json`` /
``processor_config.json``, written out as HF config objects. What differs from the real
checkpoints:

* the weights are random (seeded);
* the LM has ``text_layers`` decoder layers (default 2; the real ones have 32 or 28);
* the vision tower keeps ``vision_layers`` blocks when given (default: the real depth);
  Qwen2.5-VL then keeps the full-attention blocks below the cut;
* the image processors are the PIL classes HF uses without torchvision (``CLIPImageProcessorPil``,
  ``LlavaNextImageProcessorPil``, ``Qwen2VLImageProcessorPil``), with the published settings;
* the tokenizer is the offline byte-level one of :mod:`interp.models.tiny.tokenizer` with
  the family's image token and the tiny builders' chat template, so token ids (image and
  special tokens included) are not the real ones; the vocabulary keeps the real size, so
  the embedding and the unembedding have the real shape.

So the token geometry (image-token counts, grids, anyres tiles, merges) and every
activation's shape are those of the real model. Usage::

    save_real(LLAVA_1_5, "llava-real", vision_layers=1)  # ~1.4 GB in bfloat16
    vlm = interp.load("llava-real", dtype="bfloat16")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    MistralConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
)
from transformers import initialization as init
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig, Qwen2_5_VLVisionConfig
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from ...errors import InterpError, UnsupportedModelError
from ..processors import image_only_processor, quiet_torchvision_fallback, token_id
from .qwen2_vl import qwen_tokenizer, token_ids
from .tokenizer import byte_tokenizer, chat_template

LLAVA_1_5 = "llava-hf/llava-1.5-7b-hf"
LLAVA_NEXT_MISTRAL = "llava-hf/llava-v1.6-mistral-7b-hf"
QWEN2_VL = "Qwen/Qwen2-VL-7B-Instruct"
QWEN2_5_VL = "Qwen/Qwen2.5-VL-7B-Instruct"

#: LLaVA-NeXT-Mistral's published ``image_grid_pinpoints`` (height, width)
LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

#: Qwen2-VL / Qwen2.5-VL ``preprocessor_config.json``: pixel bounds of the smart resize
QWEN_MIN_PIXELS = 3136
QWEN_MAX_PIXELS = 12845056


def _depth(real: int, cut: int | None) -> int:
    return real if cut is None else int(cut)


def _special_ids(tokenizer) -> dict:
    return dict(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )


# -- LLaVA-1.5 / LLaVA-NeXT: CLIP ViT-L/14-336 + Llama-2 / Mistral ------------------------


def clip_vit_l_336(vision_layers: int | None = None) -> CLIPVisionConfig:
    """CLIP ViT-L/14 at 336 px (``openai/clip-vit-large-patch14-336``), the LLaVA tower."""
    return CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=_depth(24, vision_layers),
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )


def _llava_processor(processor_class, image_processor):
    """A LLaVA-style processor: byte tokenizer with ``<image>``, the published token settings."""
    tokenizer = byte_tokenizer(image_token="<image>", template=chat_template("<image>\n"))
    return processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )


def _clip_processing() -> dict:
    """The CLIP preprocessing both LLaVA checkpoints publish: bicubic 336, CLIP mean/std."""
    return dict(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        resample=PILImageResampling.BICUBIC,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )


def _llava_1_5(text_layers: int, vision_layers: int | None):
    processor = _llava_processor(LlavaProcessor, CLIPImageProcessorPil(do_center_crop=True, **_clip_processing()))
    tokenizer = processor.tokenizer
    text = LlamaConfig(  # lmsys/vicuna-7b-v1.5 (Llama-2-7B)
        vocab_size=32064,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=text_layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        **_special_ids(tokenizer),
    )
    config = LlavaConfig(
        vision_config=clip_vit_l_336(vision_layers),
        text_config=text,
        image_token_index=token_id(tokenizer, "<image>"),
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    return LlavaForConditionalGeneration, config, processor


def _llava_next_mistral(text_layers: int, vision_layers: int | None):
    image_processor = LlavaNextImageProcessorPil(
        image_grid_pinpoints=LLAVA_NEXT_PINPOINTS, do_pad=True, do_center_crop=True, **_clip_processing()
    )
    processor = _llava_processor(LlavaNextProcessor, image_processor)
    tokenizer = processor.tokenizer
    text = MistralConfig(  # mistralai/Mistral-7B-Instruct-v0.2
        vocab_size=32064,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=text_layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        sliding_window=None,
        **_special_ids(tokenizer),
    )
    config = LlavaNextConfig(
        vision_config=clip_vit_l_336(vision_layers),
        text_config=text,
        image_token_index=token_id(tokenizer, "<image>"),
        image_grid_pinpoints=LLAVA_NEXT_PINPOINTS,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    return LlavaNextForConditionalGeneration, config, processor


# -- Qwen2-VL / Qwen2.5-VL: NaViT towers with a 2x2 merger + Qwen2-7B LM with M-RoPE -----


def _qwen_processor(processor_class):
    """The published Qwen2-VL image processing (also Qwen2.5-VL's) with the byte tokenizer."""
    tokenizer = qwen_tokenizer()
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=QWEN_MIN_PIXELS,
        max_pixels=QWEN_MAX_PIXELS,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        resample=PILImageResampling.BICUBIC,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    return image_only_processor(processor_class)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )


def _qwen_text(config_class, tokenizer, text_layers: int, max_positions: int):
    """The Qwen2-7B LM of both Qwen-VL 7B checkpoints."""
    return config_class(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=text_layers,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-6,
        use_sliding_window=False,
        sliding_window=32768,
        max_window_layers=28,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        tie_word_embeddings=False,
        **_special_ids(tokenizer),
    )


def _qwen2_vl(text_layers: int, vision_layers: int | None):
    processor = _qwen_processor(Qwen2VLProcessor)
    tokenizer = processor.tokenizer
    config = Qwen2VLConfig(
        vision_config=Qwen2VLVisionConfig(
            depth=_depth(32, vision_layers),
            embed_dim=1280,
            hidden_size=3584,  # the merger's output: the LM width
            hidden_act="quick_gelu",
            mlp_ratio=4,
            num_heads=16,
            in_channels=3,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        text_config=_qwen_text(Qwen2VLTextConfig, tokenizer, text_layers, 32768),
        tie_word_embeddings=False,
        **token_ids(tokenizer),
    )
    return Qwen2VLForConditionalGeneration, config, processor


def _qwen2_5_vl(text_layers: int, vision_layers: int | None):
    processor = _qwen_processor(Qwen2_5_VLProcessor)
    tokenizer = processor.tokenizer
    depth = _depth(32, vision_layers)
    config = Qwen2_5_VLConfig(
        vision_config=Qwen2_5_VLVisionConfig(
            depth=depth,
            hidden_size=1280,
            intermediate_size=3420,
            hidden_act="silu",
            num_heads=16,
            in_channels=3,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            tokens_per_second=2,
            window_size=112,
            out_hidden_size=3584,
            fullatt_block_indexes=[i for i in (7, 15, 23, 31) if i < depth],
        ),
        text_config=_qwen_text(Qwen2_5_VLTextConfig, tokenizer, text_layers, 128000),
        tie_word_embeddings=False,
        **token_ids(tokenizer),
    )
    return Qwen2_5_VLForConditionalGeneration, config, processor


_BUILDERS: dict[str, Callable] = {
    LLAVA_1_5: _llava_1_5,
    LLAVA_NEXT_MISTRAL: _llava_next_mistral,
    QWEN2_VL: _qwen2_vl,
    QWEN2_5_VL: _qwen2_5_vl,
}

#: the checkpoints whose shapes this module reproduces (HF hub ids)
REAL_CHECKPOINTS: tuple[str, ...] = tuple(_BUILDERS)


def _parts(checkpoint: str, text_layers: int, vision_layers: int | None):
    if checkpoint not in _BUILDERS:
        raise UnsupportedModelError(
            f"no real-shape builder for {checkpoint!r}; available: {', '.join(REAL_CHECKPOINTS)}"
        )
    if text_layers < 1 or (vision_layers is not None and vision_layers < 1):
        raise InterpError("text_layers and vision_layers must be at least 1")
    with quiet_torchvision_fallback():
        model_class, config, processor = _BUILDERS[checkpoint](int(text_layers), vision_layers)
    vocab = config.get_text_config().vocab_size
    if len(processor.tokenizer) > vocab:  # the byte tokenizer must fit in the real vocabulary
        raise InterpError(f"tokenizer of {len(processor.tokenizer)} tokens exceeds the vocabulary ({vocab})")
    return model_class, config, processor


def real_config(checkpoint: str, *, text_layers: int = 2, vision_layers: int | None = None):
    """The config and processor of ``checkpoint`` at its real shapes, no weights.

    Args:
        checkpoint: one of :data:`REAL_CHECKPOINTS`.
        text_layers: decoder layers the LM keeps.
        vision_layers: vision blocks kept; None for the real depth.

    Returns:
        ``(config, processor)``: enough for the token geometry (``interp.inputs.prepare``).
    """
    _, config, processor = _parts(checkpoint, text_layers, vision_layers)
    return config, processor


def build_real(
    checkpoint: str,
    *,
    text_layers: int = 2,
    vision_layers: int | None = None,
    dtype: torch.dtype | str = torch.bfloat16,
    seed: int = 0,
    attn_implementation: str = "sdpa",
):
    """A seeded random model of ``checkpoint`` at its real shapes, built directly in ``dtype``.

    Args:
        checkpoint: one of :data:`REAL_CHECKPOINTS`.
        text_layers: decoder layers the LM keeps (the real models have 28-32).
        vision_layers: vision blocks kept; None for the real depth.
        dtype: the parameters' dtype, or its name (never materialised in float32 first).
        seed: torch seed of the random init.
        attn_implementation: the HF attention implementation.

    Returns:
        ``(model, processor)``, the model in eval mode.
    """
    model_class, config, processor = _parts(checkpoint, text_layers, vision_layers)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    torch.manual_seed(seed)
    # torch's per-module default init would run first and be overwritten by HF's: skip it (it
    # doubles the build time at these widths) and run HF's init once, as from_pretrained does
    with init.no_init_weights():
        model = model_class._from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    model.init_weights()
    return model.eval(), processor


def save_real(checkpoint: str, directory: str | Path, **options) -> Path:
    """Write :func:`build_real`'s model and processor as a HF model directory (``interp.load`` reads it).

    Args:
        checkpoint: one of :data:`REAL_CHECKPOINTS`.
        directory: where to write (created if missing).
        **options: :func:`build_real`'s keyword arguments.

    Returns:
        ``directory`` as a Path.
    """
    model, processor = build_real(checkpoint, **options)
    directory = Path(directory)
    model.save_pretrained(directory)
    del model
    processor.save_pretrained(directory)
    return directory


__all__ = ["REAL_CHECKPOINTS", "build_real", "real_config", "save_real", "clip_vit_l_336"]
