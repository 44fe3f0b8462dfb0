"""The engine: one bound schedule of interventions, executed two ways.

* :mod:`interp.engine.plan` — through nnsight, in ONE trace or generation (the
  remote-safe path: everything it runs is torch and nnsight);
* :mod:`interp.engine.prefix` — continuing from a captured clean pass: the clean
  forward runs once per sample, and each edited variant restarts at its first
  edited layer, on the rows it can change (local models);
  :mod:`interp.engine.decode` continues greedy generation from such restarts;
  :mod:`interp.engine.batched` runs several samples' clean passes as one padded forward.

Interventions say what they do through their own interface
(:class:`interp.interventions.base.Intervention`: ``sites``, ``edit_hidden``,
``edit_mask``, ``recorded_as``), so neither executor knows their classes.
"""

from .batched import capture_batch
from .plan import Plan, RunResult, build_schedule, execute_step
from .clean_kv import fill_kv
from .clean_pass import CleanPass, capture, supports_prefix_reuse
from .restarts import Restart, continue_from, restart
from .row_suffix import first_changed_row
from .unembedding import unembed

__all__ = [
    "CleanPass",
    "Plan",
    "Restart",
    "RunResult",
    "build_schedule",
    "capture",
    "capture_batch",
    "continue_from",
    "execute_step",
    "fill_kv",
    "first_changed_row",
    "restart",
    "supports_prefix_reuse",
    "unembed",
]
