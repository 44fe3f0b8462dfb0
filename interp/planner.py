"""What one sample of ``interp reproduce`` will hold in memory and the layer work it runs,
from the model's config and one prepared prompt (no weights loaded).

Memory, each part at its peak (bytes; the peak of a sample is about their sum):

* ``weights``: every parameter at the run's dtype (counted on the meta device);
* ``clean_prefix``: the captured clean pass, every decoder layer's input ``[seq, d]`` and its
  keys/values (:func:`interp.engine.memory.kv_bytes`);
* ``restart_states``: the masking sweep's started conditions' hidden states (layer-major: all of a
  restart slice at once) over the rows they recompute (from the first image token);
* ``layer_activations``: one restart forward's MLP activations (``restart_batch`` conditions);
* ``attention_scores``: eager attention's score matrix of one restart forward (SDPA: not
  materialised);
* ``decode_kv``: with generation scoring, a decode slice's keys/values, ``KV_COPIES`` times;
* ``scored_logits``: every condition's logits at the scored positions (float32).

Work: the layer-forward count of the clean pass and the sweep's restarts, and the layer x rows
they recompute (single, window and cumulative masking at layer ``l`` share that layer's forward).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .engine.memory import KV_COPIES
from .options import SWEEP_VARIANTS

#: the variants that scale image tokens (they recompute from the first image token and share the
#: forward of the layer they start at); the knockouts recompute their query rows only
IMAGE_EDITS = ("single", "window", "cumulative")

#: scored positions a teacher-forced answer takes (its tokens); a planning figure
ANSWER_TOKENS = 3


@dataclass
class SamplePlan:
    """One sample's estimated memory parts (bytes) and layer work."""

    tokens: int
    memory: dict[str, int] = field(default_factory=dict)
    work: dict[str, int] = field(default_factory=dict)

    @property
    def peak_bytes(self) -> int:
        return sum(self.memory.values())

    def lines(self) -> list[str]:
        """The plan as a short table for the terminal."""
        gib = 1024**3
        out = [f"one sample: {self.tokens} prompt tokens; estimated peak {self.peak_bytes / gib:.2f} GiB"]
        out += [f"  {name:<18} {value / gib:8.3f} GiB" for name, value in self.memory.items()]
        out += [f"  {name:<18} {value:>12,}" for name, value in self.work.items()]
        return out


def weight_bytes(config: Any, dtype: Any) -> int:
    """Bytes of every parameter of the model ``config`` describes, at ``dtype`` (meta device)."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return sum(p.numel() for p in model.parameters()) * dtype.itemsize


def plan_sample(
    adapter: Any,
    config: Any,
    dtype: Any,
    prepared: Any,
    *,
    variants: tuple[str, ...] = SWEEP_VARIANTS,
    restart_batch: int = 8,
    scoring: str = "teacher",
    decode_batch: int | None = None,
    max_new_tokens: int = 8,
    attn_implementation: str = "sdpa",
    weights: int | None = None,
) -> SamplePlan:
    """The memory and work of one sample's clean pass and masking sweep.

    Args:
        adapter: the family adapter (:func:`interp.models.adapters.adapter_for`).
        config: the model's HF config.
        dtype: the torch dtype the model runs in.
        prepared: the sample (:class:`interp.inputs.Prepared`): its length and image tokens.
        variants: the sweep's variants (each runs at every layer).
        restart_batch: conditions per restart forward.
        scoring: ``"teacher"`` or ``"generate"``.
        decode_batch: conditions decoded together (None: all of them).
        max_new_tokens: tokens a generation-scored condition decodes.
        attn_implementation: ``"eager"`` materialises attention scores.
        weights: the weights' bytes when known (else counted from the config).

    Returns:
        The :class:`SamplePlan`.
    """
    text = adapter.text_config(config)
    n_layers, d_model = adapter.n_layers(config), int(text.hidden_size)
    seq = prepared.seq_len
    rows = seq - int(prepared.image_positions.min())  # what an image-token edit recomputes
    per_token_kv = adapter.kv_bytes_per_token(config, dtype)
    b = dtype.itemsize
    conditions = len(variants) * n_layers
    held = conditions if decode_batch is None else min(conditions, decode_batch)
    intermediate = int(getattr(text, "intermediate_size", 4 * d_model))
    memory = {
        "weights": weight_bytes(config, dtype) if weights is None else weights,
        "clean_prefix": n_layers * seq * (d_model * b + per_token_kv),
        "restart_states": (held if scoring == "generate" else conditions) * rows * d_model * b,
        "layer_activations": restart_batch * rows * (3 * intermediate + 4 * d_model) * b,
        "attention_scores": (
            restart_batch * int(text.num_attention_heads) * rows * seq * b if attn_implementation == "eager" else 0
        ),
        "decode_kv": KV_COPIES * held * per_token_kv * n_layers * (seq + max_new_tokens)
        if scoring == "generate"
        else 0,
        "scored_logits": (conditions + 1) * ANSWER_TOKENS * int(text.vocab_size) * 4,
    }
    question = prepared.question_positions
    question_rows = seq - int(question.min()) if len(question) else 1
    work = _sweep_work(variants, n_layers, seq, rows, question_rows)
    if scoring == "generate":
        work["decode_steps"] = max_new_tokens - 1
    return SamplePlan(seq, memory, work)


def _sweep_work(variants: tuple[str, ...], n_layers: int, seq: int, image_rows: int, question_rows: int) -> dict:
    """Layer applications and layer x rows of the clean pass and every sweep condition's restart."""
    rows_of = {"knockout_last": 1 + ANSWER_TOKENS, "knockout_question": question_rows}
    applications, layer_rows = n_layers, n_layers * seq
    edits = [v for v in variants if v in IMAGE_EDITS]
    for start in range(n_layers):
        after = n_layers - start
        if edits:  # the edits share the forward of their start layer
            applications += len(edits) * after - (len(edits) - 1)
            layer_rows += image_rows * (len(edits) * after - (len(edits) - 1))
        for variant in variants:
            if variant not in IMAGE_EDITS:
                applications += after
                layer_rows += rows_of.get(variant, seq) * after
    return {"layer_applications": applications, "layer_rows": layer_rows}
