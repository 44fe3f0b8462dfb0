"""The fast path: run the clean pass once, restart edited variants at their first edited layer.

An edit at layer ``l`` leaves layers ``< l`` exactly as in the clean run. :func:`capture`
runs the clean forward once in an nnsight trace and keeps

* each decoder layer's inputs (the hidden states and every keyword the model passes:
  position embeddings, masks, ...), so a variant can restart at any layer;
* the logits at the scored positions;
* what the clean pass's recorders recorded (e.g. the last token's attention at every
  layer, or the residual stream at the scored positions) — shared by every analysis
  of the sample, and copied into a variant's records for its sites below the restart
  layer (:meth:`Intervention.before_restart`).

:func:`continue_from` runs only layers ``start .. L-1`` for a batch of variants at once
(each variant one batch row, sharing the captured prefix) and returns their final
hidden states at the scored positions; :func:`unembed` applies the final norm and the
unembedding (call it once per sample for everything collected, not once per chunk).

:func:`restart` is the general form. Row-level restart: rows before the first row any
variant can change (:func:`first_changed_row`, from each intervention's ``first_row``)
are clean in every layer (causal attention), so only the rows from there on are
recomputed; each layer reads the earlier rows' clean keys and values from a
``DynamicCache`` (:func:`fill_kv`: the clean layers' own attention filled it), through
the unchanged HF layer forward. Variants whose input to a layer is bit-for-bit the same
and that edit nothing inside it share that layer's forward. With ``kv_rows`` a restart
also returns every layer's keys and values of the prompt rows, from which
:mod:`interp.engine.decode` continues a generation.

:func:`restart_many` restarts groups with different start layers in one layer-major pass:
at each layer every started variant runs it, batched with the others that recompute the
same rows, so the restarts of 30 layers take 30 rounds of large forwards instead of 30
separate stacks of small ones (the same layer-row work). The last layer computes its
output projection and MLP for the scored rows only (:func:`~interp.engine.restarts._only_rows`).

Every intervention runs here through its own interface — ``edit_hidden`` at
``resid_pre`` / ``z`` (per head, before the attention's output projection) /
``attn_out`` / ``mlp_out`` / ``resid_post``, ``edit_mask`` at
``attn_pattern`` (through the layer's attention mask), ``before_restart`` below the
restart layer — so the executor never looks at classes. Families whose forward adds
to the residual stream between layers outside the layer modules (the adapter's
``between_layer_edits``, e.g. Qwen3-VL's DeepStack) cannot restart mid-stack:
:func:`supports_prefix_reuse` says so and analyses fall back to full passes.

Where each part lives (this module re-exports their public names, so
``from interp.engine.prefix import ...`` keeps working):

* :mod:`interp.engine.clean_pass` — :class:`CleanPass`, :func:`capture`, :func:`supports_prefix_reuse`;
* :mod:`interp.engine.unembedding` — :func:`unembed`;
* :mod:`interp.engine.kv_cache` — the cache keywords (:func:`cache_keyword`) and :func:`cache_layer_kv`;
* :mod:`interp.engine.clean_kv` — :func:`fill_kv`;
* :mod:`interp.engine.row_suffix` — :func:`first_changed_row` and the layer keywords cut to a row suffix;
* :mod:`interp.engine.variant_edits` — the variants' interventions applied inside a restart;
* :mod:`interp.engine.restarts` — :class:`Restart`, :class:`RestartGroup`, :func:`restart`,
  :func:`restart_many`, :func:`continue_from`;
* :mod:`interp.engine.restart_batches` — :func:`forward_batches` (replayed by :mod:`interp.planner`).
"""

from .clean_kv import fill_kv
from .clean_pass import CleanPass, _recorder_specs, capture, supports_prefix_reuse
from .kv_cache import cache_keyword, cache_layer_kv
from .restart_batches import forward_batches
from .restarts import Restart, RestartGroup, continue_from, restart, restart_many
from .row_suffix import _ROW_KEYWORDS, first_changed_row
from .unembedding import unembed

__all__ = [
    "_ROW_KEYWORDS",
    "CleanPass",
    "Restart",
    "RestartGroup",
    "_recorder_specs",
    "cache_keyword",
    "cache_layer_kv",
    "capture",
    "continue_from",
    "fill_kv",
    "first_changed_row",
    "forward_batches",
    "restart",
    "restart_many",
    "supports_prefix_reuse",
    "unembed",
]
