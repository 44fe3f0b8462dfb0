"""How a restart splits the variants running a layer into forward batches.

:func:`forward_batches` is public: the planner (:mod:`interp.planner`) replays it over a sweep's
restart groups to size the largest restart forward without loading a model.
"""

from __future__ import annotations


def forward_batches(active: list[int], offsets: list[int], group_of: list[int], batch: int):
    """``(first row, members)``: the started variants split into batches of at most ``batch``
    that recompute the same rows, each group's variants kept together where they fit."""
    by_row: dict[int, list[int]] = {}
    for v in active:
        by_row.setdefault(offsets[v], []).append(v)
    for row, variants in by_row.items():
        runs: list[list[int]] = []
        for v in variants:
            if runs and group_of[runs[-1][0]] == group_of[v]:
                runs[-1].append(v)
            else:
                runs.append([v])
        chunk: list[int] = []
        for run in runs:
            while len(run) > batch:
                yield row, run[:batch]
                run = run[batch:]
            if len(chunk) + len(run) > batch:
                yield row, chunk
                chunk = []
            chunk = chunk + run
        if chunk:
            yield row, chunk
