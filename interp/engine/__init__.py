"""The engine: one bound schedule of interventions, executed two ways.

* :mod:`interp.engine.plan` — through nnsight, in ONE trace or generation (the
  remote-safe path: everything it runs is torch and nnsight);
* :mod:`interp.engine.prefix` — continuing from a captured clean pass: the clean
  forward runs once per sample, and each edited variant restarts at its first
  edited layer (local models).

Interventions say what they do through their own interface
(:class:`interp.interventions.base.Intervention`: ``sites``, ``edit_hidden``,
``edit_mask``, ``recorded_as``), so neither executor knows their classes.
"""

from .plan import Plan, RunResult, build_schedule, execute_step
from .prefix import CleanPass, capture, continue_from, supports_prefix_reuse, unembed

__all__ = ["CleanPass", "Plan", "RunResult", "build_schedule", "capture", "continue_from", "execute_step",
           "supports_prefix_reuse", "unembed"]
