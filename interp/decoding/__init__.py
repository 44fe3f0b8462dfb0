"""Decoding strategies that run through the nnsight trace (and so compose with interventions).

:func:`dola_generate` is DoLa (Chuang et al., 2024) as transformers 4.46 implemented it,
with the authors' (WCD) attention-based choice of the premature layer as an option.
"""

from .dola import (
    apply_repetition_penalty,
    DolaResult,
    attention_jsd_scores,
    candidate_layers,
    dola_contrast,
    dola_generate,
    logit_jsd_scores,
    prefill_cache,
    relative_top_filter,
    sample_next,
    squared_jsd,
)

__all__ = [
    "apply_repetition_penalty",
    "DolaResult",
    "attention_jsd_scores",
    "candidate_layers",
    "dola_contrast",
    "dola_generate",
    "logit_jsd_scores",
    "prefill_cache",
    "relative_top_filter",
    "sample_next",
    "squared_jsd",
]
