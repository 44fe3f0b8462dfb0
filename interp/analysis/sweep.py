"""The layer-wise masking sweep: where does the answer start to depend on the image?

For every decoder layer ``l`` and every sample, a *condition* edits the forward
pass (prefill only) and the reference answer is scored:

=================== ===========================================================
variant             edit at layer ``l``
=================== ===========================================================
``single``          image-token hidden states x ``scale`` at the input of ``l``
                    (the paper: x 1e-9)
``window``          the same at the inputs of ``l .. l+window-1``
``cumulative``      the same at the inputs of every layer from ``l`` on
``knockout_last``   the last prompt token may not attend to image tokens in
                    layers ``l .. l+window-1``
``knockout_question`` the question tokens may not attend to image tokens there
=================== ===========================================================

Scoring (``scoring=``):

* ``"teacher"``: one teacher-forced pass scores both the reference answer's
  log-probability and *exact greedy correctness* (see :mod:`interp.analysis.teacher`);
* ``"generate"``: greedy generation, scored VQA-style by the item's scorer, plus
  the teacher-forced log-probability.

Execution (``mode=``): ``"fast"`` runs the clean pass once per sample and restarts
each condition at its first edited layer, on the rows it can change only (a knockout
from its query rows, an image-token edit from the first image token; the earlier
rows' clean keys and values come through a ``DynamicCache``), several conditions
batched in one forward and a layer run once for conditions whose input to it is the
same (single/window/cumulative at their layer), the conditions of every restart layer
riding in the same layer-major forwards (:mod:`interp.engine.prefix`; local models), the
last layer's output projection and MLP run for the scored rows only, and unembeds
every condition's scored positions in one call per sample. With ``scoring="generate"``
each restart also keeps its prompt rows' keys and values and the sample's conditions
then decode greedily as one batch, continuing
``model.generate`` from those prefills (:mod:`interp.engine.decode`);
``"naive"`` runs every condition as a full pass through a
:class:`~interp.interventions.Plan` (the reference the fast mode is tested
against, and the path for ``remote=`` runs). ``"auto"`` picks fast where it applies.

The result is a tidy DataFrame, one row per (item, variant, layer), with the
baseline as ``variant="baseline"``, ``layer=-1``.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Iterable

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..engine.decode import greedy_continue
from ..engine.memory import resolve_decode_batch
from ..engine.clean_kv import fill_kv
from ..engine.clean_pass import supports_prefix_reuse
from ..engine.restarts import RestartGroup, restart, restart_many
from ..engine.row_suffix import first_changed_row
from ..engine.unembedding import unembed
from ..errors import InterpError
from ..interventions import AttentionKnockout, Plan, ScaleImageTokens
from ..interventions.base import resolve_layers
from ..options import DEFAULT_WINDOW, PAPER_MASK_SCALE
from .clean import SamplePass, sample_pass
from .items import as_items
from .teacher import TeacherForced

from ..options import KNOWN_VARIANTS, MODES, SCORINGS, SWEEP_VARIANTS


#: the sweep's default conditions (:data:`interp.options.SWEEP_VARIANTS`)
VARIANTS = SWEEP_VARIANTS


def condition(
    variant: str,
    layer: int,
    n_layers: int,
    tf: TeacherForced,
    *,
    window: int = DEFAULT_WINDOW,
    scale: float = PAPER_MASK_SCALE,
) -> list:
    """The interventions of one sweep condition (unbound)."""
    span = list(range(layer, min(layer + window, n_layers)))
    if variant == "single":
        return [ScaleImageTokens(layer, scale)]
    if variant == "window":
        return [ScaleImageTokens(span, scale)]
    if variant == "cumulative":
        return [ScaleImageTokens(list(range(layer, n_layers)), scale)]
    if variant == "knockout_last":
        return [AttentionKnockout([tf.last_prompt_position], "image", span)]
    if variant == "knockout_question":
        return [AttentionKnockout("question", "image", span)]
    if variant == "knockout_text":
        return [AttentionKnockout("text", "image", span)]
    raise InterpError(f"unknown sweep variant {variant!r}; use one of {', '.join(KNOWN_VARIANTS)}")


def fast_reason(vlm, scoring: str, remote) -> str | None:
    """Why the fast sweep does not apply (None when it does)."""
    return supports_prefix_reuse(vlm) or ("remote execution" if remote not in (None, False) else None)


def check_options(variants, scoring: str, mode: str, window: int, n_layers: int | None = None) -> tuple[str, ...]:
    """The sweep's options checked (one line each); ``window`` against ``n_layers`` when given."""
    variants = tuple(variants)
    for variant in variants:
        if variant not in KNOWN_VARIANTS:
            raise InterpError(f"unknown sweep variant {variant!r}; use one of {', '.join(KNOWN_VARIANTS)}")
    if scoring not in SCORINGS:
        raise InterpError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    if mode not in MODES:
        raise InterpError(f"mode must be one of {MODES}, got {mode!r}")
    if window < 1:
        raise InterpError("window must be at least 1 layer")
    # a window runs to the last layer at most; one longer than both the model and the default (which
    # suits any depth) is a mistake, not a wish
    if n_layers is not None and window > max(n_layers, DEFAULT_WINDOW):
        raise InterpError(f"window {window} is longer than the model's {n_layers} decoder layers; use 1-{n_layers}")
    return variants


def check_decode_batch(value: int | str | None) -> int | str | None:
    """``decode_batch`` checked: ``"auto"``, a positive int, or None / ``"all"`` (returned as None:
    every condition at once); one line otherwise."""
    from .. import validate

    if value is None or value == "all":
        return None
    if value == "auto":
        return value
    return validate.positive_int(value, "decode_batch (or 'auto')")


def use_fast(vlm, mode: str, scoring: str, remote) -> bool:
    reason = fast_reason(vlm, scoring, remote)
    if mode == "fast" and reason:
        raise InterpError(f"the fast sweep does not apply here ({reason}); use mode='naive'")
    return mode == "fast" or (mode == "auto" and reason is None)


def masking_sweep(
    vlm,
    samples: Any,
    *,
    variants: Iterable[str] = ("single",),
    layers: Any = "all",
    window: int = DEFAULT_WINDOW,
    scale: float = PAPER_MASK_SCALE,
    scoring: str = "teacher",
    mode: str = "auto",
    limit: int | None = None,
    max_new_tokens: int = 8,
    batch: int = 8,
    remote: bool | str | None = None,
    progress: bool = True,
    rows: bool = True,
    decode_batch: int | str | None = "auto",
) -> pd.DataFrame:
    """Run the sweep; returns one row per (item, variant, layer) with ``correct`` (0/1 or the
    VQA score), ``logprob`` of the reference answer, and ``prediction`` when generating.

    Fast mode: a sample's conditions restart in one layer-major pass, at most ``batch`` conditions per
    layer forward (:func:`interp.engine.prefix.restart_many`; on a GPU raise it as memory allows: a
    forward holds ``batch x recomputed rows`` activations); ``rows=False`` restarts every condition on
    every row, each restart layer's conditions alone (the reference the row-level restart is tested
    against); ``decode_batch`` caps how many conditions of a sample decode together when generating
    (their prompt keys/values are held until then): ``"auto"`` sizes it from the model's keys/values
    and the free memory (:func:`interp.engine.memory.decode_batch_for`), None decodes all at once."""
    variants = check_options(variants, scoring, mode, window, vlm.n_layers)
    decode_batch = check_decode_batch(decode_batch)
    items = as_items(samples, limit)
    layer_list = resolve_layers(layers, vlm.n_layers)
    fast = use_fast(vlm, mode, scoring, remote)
    out: list[dict] = []
    bar = tqdm(
        items, desc=f"masking sweep ({'fast' if fast else 'naive'}, {scoring})", unit="sample", disable=not progress
    )
    for item in bar:
        sp = sample_pass(vlm, item, restartable=fast, remote=remote, attention_layers=None, residual_layers=None)
        out.extend(
            sweep_rows(
                vlm,
                sp,
                variants,
                layer_list,
                window=window,
                scale=scale,
                scoring=scoring,
                fast=fast,
                max_new_tokens=max_new_tokens,
                batch=batch,
                remote=remote,
                rows=rows,
                decode_batch=decode_batch,
            )
        )
    return sweep_frame(out, vlm, scoring=scoring, fast=fast, scale=scale, window=window)


def sweep_frame(rows: list[dict], vlm, *, scoring: str, fast: bool, scale: float, window: int) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame.attrs.update(
        {
            "scoring": scoring,
            "mode": "fast" if fast else "naive",
            "scale": scale,
            "window": window,
            "n_layers": vlm.n_layers,
            "model": vlm.name,
        }
    )
    return frame


def sweep_rows(
    vlm,
    sp: SamplePass,
    variants,
    layer_list,
    *,
    window: int,
    scale: float,
    scoring: str,
    fast: bool,
    max_new_tokens: int = 8,
    batch: int = 8,
    remote=None,
    rows: bool = True,
    decode_batch: int | str | None = "auto",
) -> list[dict]:
    """One sample's sweep rows, from its clean pass (the baseline is the clean pass itself).

    Fast mode only: ``rows`` restarts each condition on the rows it can change (see
    :func:`interp.engine.prefix.first_changed_row`) and runs a layer once for conditions with
    the same input to it (False: every row of every condition, one batch row each), ``decode_batch`` caps
    how many conditions decode together when generating (``"auto"``: sized from the free memory; None:
    all of the sample's)."""
    conditions = [(v, l) for l in layer_list for v in variants]
    if fast:
        results = _fast(
            vlm,
            sp,
            conditions,
            window,
            scale,
            batch,
            scoring=scoring,
            max_new_tokens=max_new_tokens,
            rows=rows,
            decode_batch=decode_batch,
        )
    else:
        results = _naive(vlm, sp, conditions, window, scale, scoring, max_new_tokens, remote)
    item = sp.item
    return [
        {"item": item.id, "kind": item.kind, "variant": variant, "layer": layer, **result}
        for (variant, layer), result in results.items()
    ]


def _fast(
    vlm,
    sp: SamplePass,
    conditions,
    window,
    scale,
    batch,
    *,
    scoring: str = "teacher",
    max_new_tokens: int = 8,
    rows: bool = True,
    decode_batch: int | str | None = "auto",
) -> dict:
    """Restart every condition from the clean pass: layer by layer, the conditions that have
    started and change the same rows run in batches of ``batch`` (``rows=False``: each restart
    layer's conditions alone, on every row); unembedding once per sample. With generation
    scoring each restart also keeps its prompt rows' keys and values, and the conditions of
    the sample then decode together (:func:`interp.engine.decode.greedy_continue`)."""
    tf, clean, item = sp.tf, sp.clean, sp.item
    generate = scoring == "generate"
    groups: dict[tuple[int, int], list] = {}
    for variant, layer in conditions:
        bound = Plan(condition(variant, layer, vlm.n_layers, tf, window=window, scale=scale)).bind(vlm, tf.prepared)
        row = first_changed_row(vlm, clean, layer, [bound]) if rows else 0
        groups.setdefault((layer, row), []).append(((variant, layer), bound))
    if generate:
        decode_batch = resolve_decode_batch(vlm, decode_batch, tf.prompt_len + max_new_tokens)
        if decode_batch is not None and decode_batch >= len(conditions) + 1:
            decode_batch = None  # every condition fits: one batch, as without a cap
    decoder = _Decoder(vlm, sp, max_new_tokens, decode_batch) if generate else None
    keys, finals = [], []
    for piece in _restarts(
        vlm,
        clean,
        groups,
        batch,
        kv_rows=tf.prompt_len if generate else None,
        rows=rows,
        decode_batch=decode_batch if generate else None,
    ):
        for chunk, result in piece:
            keys.extend(chunk)
            finals.append(result.hidden)
            if decoder is not None:
                decoder.add(chunk, result.kv, result.hidden[:, 0])
        if decoder is not None:  # with decode_batch, each restart slice decodes before the next starts
            decoder.end_slice()
    if decoder is not None:  # the baseline last, so that the decoder's batches are the restart slices
        decoder.add(
            [("baseline", -1)],
            [(k[:, :, : tf.prompt_len], v[:, :, : tf.prompt_len]) for k, v in fill_kv(vlm, clean)],
            clean.logits[:1],
        )
    scored = {("baseline", -1): clean.logits}
    if finals:
        scored.update(zip(keys, unembed(vlm, torch.cat(finals))))  # once per sample
    results = {}
    for key in [("baseline", -1)] + list(conditions):
        logprob, match = tf.score(scored[key])
        results[key] = {"correct": float(match), "logprob": logprob}
    if decoder is not None:
        for key, text in decoder.finish(scored).items():
            results[key]["prediction"] = text
            results[key]["correct"] = item.score(text)
    return results


def _restarts(vlm, clean, groups: dict, batch: int, *, kv_rows, rows: bool, decode_batch):
    """Slices of ``(condition keys, Restart)`` pairs covering every restart group, in order: all
    of them in one layer-major pass (slices of at most ``decode_batch`` conditions when that
    bounds the keys/values held), or with ``rows=False`` the every-row reference, each restart
    layer's conditions alone in batches (a slice each)."""
    if rows:
        for piece in _slices(list(groups.items()), decode_batch):
            results = restart_many(
                vlm,
                clean,
                [RestartGroup(start, [bound for _, bound in members], row) for (start, row), members in piece],
                batch=batch,
                kv_rows=kv_rows,
            )
            yield [([key for key, _ in members], result) for (_, members), result in zip(piece, results)]
        return
    for (start, row), members in groups.items():
        for i in range(0, len(members), batch):
            chunk = members[i : i + batch]
            yield [
                (
                    [key for key, _ in chunk],
                    restart(
                        vlm, clean, start, [bound for _, bound in chunk], first_row=row, kv_rows=kv_rows, share=False
                    ),
                )
            ]


def _slices(groups: list, size: int | None) -> list[list]:
    """``groups`` (``(key, members)`` pairs) in consecutive slices of at most ``size`` members
    each, a group never split (so a slice holds more only when one group does); None: one slice."""
    if size is None:
        return [groups] if groups else []
    out, piece, count = [], [], 0
    for entry in groups:
        if piece and count + len(entry[1]) > size:
            out.append(piece)
            piece, count = [], 0
        piece.append(entry)
        count += len(entry[1])
    return out + ([piece] if piece else [])


class _Decoder:
    """Collects the conditions' prefills (per-layer prompt keys/values) and decodes them in
    batches: all of a sample's at the end (``decode_batch=None``; their first-token logits are
    the sample's scored logits), or each restart slice (at most ``decode_batch`` conditions) as it
    completes, holding only that slice's keys/values (their first-token logits unembedded per
    slice)."""

    def __init__(self, vlm, sp: SamplePass, max_new_tokens: int, decode_batch: int | None):
        self.vlm, self.sp, self.max_new_tokens, self.size = vlm, sp, max_new_tokens, decode_batch
        self.pending: list = []  # (keys, kv, first-position logits or hidden)
        self.texts: dict = {}

    def add(self, keys: list, kv: list, first) -> None:
        self.pending.append((keys, kv, first))

    def end_slice(self) -> None:
        """A restart slice is complete: decode it now when slices bound what is held."""
        if self.size is not None:
            self._flush(None)

    def finish(self, scored: dict) -> dict:
        self._flush(scored)
        return self.texts

    def _flush(self, scored) -> None:
        if not self.pending:
            return
        vlm, pending, self.pending = self.vlm, self.pending, []
        keys = [key for chunk, _, _ in pending for key in chunk]
        if scored is not None and self.size is None:
            logits = torch.stack([scored[key][0] for key in keys])
        else:  # the baseline's are logits already; a restart's first scored position is its hidden state
            logits = torch.cat(
                [first if key[0] == ("baseline", -1) else unembed(vlm, first) for key, _, first in pending]
            )
        layer_kv = []
        for i in range(vlm.n_layers):  # each layer's parts dropped once joined: one copy held, not two
            layer_kv.append(
                (torch.cat([kv[i][0] for _, kv, _ in pending]), torch.cat([kv[i][1] for _, kv, _ in pending]))
            )
            for _, kv, _ in pending:
                kv[i] = None
        del pending
        for key, row in zip(keys, greedy_continue(vlm, self.sp.prepared, logits, layer_kv, self.max_new_tokens)):
            self.texts[key] = vlm.decode(torch.tensor([row]))[0]


def _naive(vlm, sp: SamplePass, conditions, window, scale, scoring, max_new_tokens, remote) -> dict:
    tf, item = sp.tf, sp.item
    positions = tf.positions.tolist()

    def score(interventions, logits=None) -> dict:
        if logits is None:
            logits = vlm.run(tf.prepared, *interventions, logit_positions=positions, remote=remote).logits[0]
        logprob, match = tf.score(logits)
        result = {"correct": float(match), "logprob": logprob}
        if scoring == "generate":
            gen = vlm.run(sp.prepared, *interventions, generate=True, max_new_tokens=max_new_tokens, remote=remote)
            result["prediction"] = gen.text[0]
            result["correct"] = item.score(gen.text[0])
        return result

    results = {("baseline", -1): score([], sp.clean.logits)}
    for variant, layer in conditions:
        results[(variant, layer)] = score(condition(variant, layer, vlm.n_layers, tf, window=window, scale=scale))
    return results
