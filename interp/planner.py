"""What one sample of ``interp reproduce`` will hold in memory and the layer work it runs,
from the model's config and one prepared prompt (no weights loaded).

Memory, each part at its peak (bytes; the peak of a sample is about their sum):

* ``weights``: every parameter at the run's dtype (counted on the meta device);
* ``clean_prefix``: the captured clean pass, every decoder layer's input ``[seq, d]`` and its
  keys/values (:func:`interp.engine.memory.kv_bytes`);
* ``clean_forward``: that pass's own temporaries: one layer's activations and the logits over
  the whole prompt;
* ``restart_states``: the masking sweep's started conditions' hidden states (layer-major: all of a
  restart slice at once) over the rows they recompute (from the first image token);
* ``layer_activations``: the largest restart forward's activations: the engine's own batching
  (:func:`interp.engine.prefix.forward_batches`) replayed over the sweep's restart groups, a group's
  image edits sharing the forward of their start layer, the last layer's MLP on the scored rows only;
* ``attention_scores``: eager attention's score matrix of that forward (SDPA: not materialised);
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
    unit: str = "sample"
    #: parts that are never alive together: only the largest of them counts in the peak
    alternatives: tuple[str, ...] = ()

    @property
    def peak_bytes(self) -> int:
        """The parts summed, the :attr:`alternatives` by their largest."""
        rest = sum(v for k, v in self.memory.items() if k not in self.alternatives)
        return rest + max((self.memory[k] for k in self.alternatives), default=0)

    def lines(self) -> list[str]:
        """The plan as a short table for the terminal."""
        gib = 1024**3
        out = [f"one {self.unit}: {self.tokens} prompt tokens; estimated peak {self.peak_bytes / gib:.2f} GiB"]
        out += [f"  {name:<18} {value / gib:8.3f} GiB" for name, value in self.memory.items()]
        out += [f"  {name:<18} {value:>12,}" for name, value in self.work.items()]
        return out

    def summary(self, command: str) -> str:
        """The one line a long command prints before it starts."""
        return (
            f"plan: one {self.unit} ~{self.peak_bytes / 1024**3:.2f} GiB at its peak, "
            f"{self.work['layer_rows']:,} layer x rows (interp {command} --dry-run shows the parts)"
        )


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
    question = prepared.question_positions
    question_rows = seq - int(question.min()) if len(question) else 1
    scored = 1 if scoring == "generate" else ANSWER_TOKENS
    largest = largest_forward(
        variants,
        n_layers,
        {"image": rows, "knockout_last": 1 + ANSWER_TOKENS, "knockout_question": question_rows, "knockout_text": seq},
        restart_batch if decode_batch is None else min(restart_batch, decode_batch),
    )
    per_row = 4 * d_model  # the attention's q, k, v and output rows
    activations = max(
        (n * (r * per_row + (min(r, scored) if last else r) * 3 * intermediate) for n, r, last in largest), default=0
    )
    scores = max((n * r for n, r, _ in largest), default=0) * int(text.num_attention_heads) * seq
    memory = {
        "weights": weight_bytes(config, dtype) if weights is None else weights,
        "clean_prefix": n_layers * seq * (d_model * b + per_token_kv),
        "clean_forward": seq * (_activation_row(text) + int(text.vocab_size)) * b,
        "restart_states": (held if scoring == "generate" else conditions) * rows * d_model * b,
        "layer_activations": activations * b,
        "attention_scores": scores * b if attn_implementation == "eager" else 0,
        "decode_kv": KV_COPIES * held * per_token_kv * n_layers * (seq + max_new_tokens)
        if scoring == "generate"
        else 0,
        "scored_logits": (conditions + 1) * ANSWER_TOKENS * int(text.vocab_size) * 4,
    }
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


def largest_forward(
    variants: tuple[str, ...], n_layers: int, rows_of: dict[str, int], batch: int
) -> list[tuple[int, int, bool]]:
    """``(distinct conditions, rows, last layer?)`` of every restart forward the fast sweep runs,
    by the engine's own batching over its restart groups: at each start layer one group of the
    image edits (they share that layer's forward: one distinct input) and one group per knockout.

    Args:
        variants: the sweep's variants.
        n_layers: decoder layers.
        rows_of: rows each kind of group recomputes (``"image"`` for the image edits).
        batch: conditions per forward at most.

    Returns:
        One tuple per forward.
    """
    from .engine.restart_batches import forward_batches

    edits = [v for v in variants if v in IMAGE_EDITS]
    starts: list[int] = []
    offsets: list[int] = []
    group_of: list[int] = []
    kinds: list[str] = []
    for layer in range(n_layers):
        groups = ([("image", edits)] if edits else []) + [(v, [v]) for v in variants if v not in IMAGE_EDITS]
        for kind, members in groups:
            group = len(set(group_of)) if group_of else 0
            for _ in members:
                starts.append(layer)
                offsets.append(-rows_of.get(kind, rows_of["image"]))  # a group key per recomputed span
                group_of.append(group)
                kinds.append(kind)
    forwards = []
    for index in range(n_layers):
        active = [v for v in range(len(starts)) if starts[v] <= index]
        for offset, members in forward_batches(active, offsets, group_of, batch):
            entering = {group_of[v] for v in members if starts[v] == index}
            distinct = len([v for v in members if starts[v] != index]) + len(entering)
            forwards.append((distinct, -offset, index == n_layers - 1))
    return forwards


def _activation_row(text: Any) -> int:
    """Elements one token holds in a layer's forward: attention q, k, v and output, and the MLP."""
    d_model = int(text.hidden_size)
    return 4 * d_model + 3 * int(getattr(text, "intermediate_size", 4 * d_model))


def plan_pair(
    adapter: Any,
    config: Any,
    dtype: Any,
    base: Any,
    per_layer: dict[int, int],
    *,
    batch: int = 16,
    attn_implementation: str = "sdpa",
    weights: int | None = None,
) -> SamplePlan:
    """The memory and work of one counterfactual pair of ``interp patch`` (fast mode).

    The source and the base are captured once (the base keeps its keys and values); each layer's
    conditions restart the base there in chunks of ``batch``, each chunk recomputing the rows from
    the first image token (an upper bound: a chunk patching later positions recomputes fewer). The
    captures' temporaries and a restart's activations are never alive together: the peak counts
    the larger.

    Args:
        adapter: the family adapter.
        config: the model's HF config.
        dtype: the torch dtype the model runs in.
        base: the pair's prepared base (:class:`interp.inputs.Prepared`).
        per_layer: patched conditions at each restart layer.
        batch: conditions per restart forward.
        attn_implementation: ``"eager"`` materialises attention scores.
        weights: the weights' bytes when known.

    Returns:
        The :class:`SamplePlan` (its ``tokens``: the base's).
    """
    text = adapter.text_config(config)
    n_layers, d_model = adapter.n_layers(config), int(text.hidden_size)
    seq = base.seq_len
    rows = seq - int(base.image_positions.min())
    b = dtype.itemsize
    chunk = min(batch, max(per_layer.values(), default=0))
    memory = {
        "weights": weight_bytes(config, dtype) if weights is None else weights,
        "clean_prefix": n_layers * seq * (2 * d_model * b + adapter.kv_bytes_per_token(config, dtype)),
        "clean_forward": seq * (_activation_row(text) + int(text.vocab_size)) * b,
        "restart_states": chunk * rows * d_model * b,
        "layer_activations": chunk * rows * _activation_row(text) * b,
        "attention_scores": chunk * int(text.num_attention_heads) * rows * seq * b
        if attn_implementation == "eager"
        else 0,
        "scored_logits": (sum(per_layer.values()) + 2) * int(text.vocab_size) * 4,
    }
    applications, layer_rows = 2 * n_layers, 2 * n_layers * seq
    for layer, n in per_layer.items():
        forwards = -(-n // batch)
        applications += forwards * (n_layers - layer)
        layer_rows += n * rows * (n_layers - layer)
    work = {"conditions": sum(per_layer.values()), "layer_applications": applications, "layer_rows": layer_rows}
    # the captures' temporaries are freed before the first restart, whose forward holds the rest
    return SamplePlan(seq, memory, work, unit="pair", alternatives=("clean_forward", "layer_activations"))


def plan_attribution(
    adapter: Any,
    config: Any,
    dtype: Any,
    base: Any,
    per_layer: dict[int, int],
    *,
    method: str = "atp",
    steps: int = 1,
    attn_implementation: str = "sdpa",
    weights: int | None = None,
) -> SamplePlan:
    """The memory and work of one counterfactual pair of attribution patching
    (:func:`interp.analysis.attribution.attribution_sweep`).

    A base pass keeps its whole forward for the backward: every layer's activations over the
    prompt (eager attention: its score matrices too), the logits and their gradient; the source's
    values at the attributed tensors are kept beside it. ``"ig"`` runs ``steps`` base passes and
    ``"atp*"`` one more per layer, one at a time.

    Args:
        adapter: the family adapter.
        config: the model's HF config.
        dtype: the torch dtype the model runs in.
        base: the pair's prepared base (:class:`interp.inputs.Prepared`).
        per_layer: attributed conditions at each layer (their count sizes nothing: one backward
            serves them all).
        method: ``"atp"``, ``"atp*"`` or ``"ig"``.
        steps: ``"ig"``'s interpolation steps.
        attn_implementation: ``"eager"`` keeps attention scores for the backward.
        weights: the weights' bytes when known.

    Returns:
        The :class:`SamplePlan` (its ``tokens``: the base's).
    """
    text = adapter.text_config(config)
    n_layers, d_model = adapter.n_layers(config), int(text.hidden_size)
    seq, b = base.seq_len, dtype.itemsize
    base_passes = steps if method == "ig" else 1 + (n_layers if method == "atp*" else 0)
    memory = {
        "weights": weight_bytes(config, dtype) if weights is None else weights,
        "source_values": 2 * len(per_layer) * seq * d_model * 4,
        "graph": n_layers * seq * (_activation_row(text) + 2 * d_model) * b,
        "attention_scores": n_layers * int(text.num_attention_heads) * seq * seq * b
        if attn_implementation == "eager"
        else 0,
        "logits_and_grad": 2 * seq * int(text.vocab_size) * 4,
    }
    work = {
        "conditions": sum(per_layer.values()),
        "forwards": 1 + base_passes,
        "backwards": base_passes,
        "layer_rows": (1 + 2 * base_passes) * n_layers * seq,  # a backward counted as one forward's rows
    }
    return SamplePlan(seq, memory, work, unit="pair")


def plan_generation(
    adapter: Any,
    config: Any,
    dtype: Any,
    prepared: Any,
    *,
    batch: int = 1,
    max_new_tokens: int = 16,
    attn_implementation: str = "sdpa",
    weights: int | None = None,
) -> SamplePlan:
    """The memory of one ``generate`` batch of ``interp evaluate`` (prompts as long as ``prepared``).

    Args:
        adapter: the family adapter.
        config: the model's HF config.
        dtype: the torch dtype the model runs in.
        prepared: a prepared question of the task.
        batch: questions per ``generate`` call.
        max_new_tokens: tokens each answer may take.
        attn_implementation: ``"eager"`` materialises the prefill's attention scores.
        weights: the weights' bytes when known.

    Returns:
        The :class:`SamplePlan` of one batch.
    """
    text = adapter.text_config(config)
    n_layers = adapter.n_layers(config)
    seq = prepared.seq_len
    b = dtype.itemsize
    memory = {
        "weights": weight_bytes(config, dtype) if weights is None else weights,
        "kv_cache": batch * (seq + max_new_tokens) * adapter.kv_bytes_per_token(config, dtype) * n_layers,
        "layer_activations": batch * seq * _activation_row(text) * b,
        "attention_scores": batch * int(text.num_attention_heads) * seq * seq * b
        if attn_implementation == "eager"
        else 0,
        "scored_logits": batch * int(text.vocab_size) * 4,
    }
    work = {"layer_applications": n_layers * max_new_tokens, "layer_rows": n_layers * batch * (seq + max_new_tokens)}
    return SamplePlan(seq, memory, work, unit="batch")
