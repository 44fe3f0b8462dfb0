"""Where :class:`Plan` used to live; it is part of the engine now (:mod:`interp.engine.plan`)."""

from ..engine.plan import Plan, RunResult, build_schedule, execute_step

__all__ = ["Plan", "RunResult", "build_schedule", "execute_step"]
