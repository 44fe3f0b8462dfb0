"""The timing harness shared by the benchmarks: settings, interleaved timing, ratios,
the machine description, progress logging and JSON cleaning.

Timing
------
Every variant runs once as a warm-up, then ``reps`` rounds; each round runs every variant
once, in an order rotated from round to round, with ``gc.collect()`` before each call. A
ratio is the median over rounds of the within-round ratio (variant time / baseline time of
the same round), so slow drifts of the background load cancel; the per-round ratios, the
medians of the raw times and the same median ratio of process CPU times
(``cpu_time_ratio``: with one torch thread, what the call itself computed, less disturbed
by other jobs) are reported beside it.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Callable

import torch

REPO = Path(__file__).resolve().parents[1]

_T0 = time.perf_counter()


def log(*parts) -> None:
    """Progress to stderr (stdout carries only the JSON result)."""
    print(f"[bench {time.perf_counter() - _T0:6.1f}s]", *parts, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Settings:
    """What a run measures and how often; ``for_mode(quick=True)`` is the seconds-long smoke test."""

    quick: bool = False
    threads: int = 1
    reps: int = 5
    mem_reps: int = 2
    memory: str = "subprocess"  # or "inprocess"
    keys: str = "all"
    organism_reps: int = 20
    sweep_samples: int = 2
    sweep_variants: tuple = ("single", "window", "cumulative", "knockout_last", "knockout_question")
    batch_questions: int = 16
    batch_size: int = 8

    @classmethod
    def for_mode(cls, quick: bool, **overrides) -> Settings:
        base = (
            cls(
                quick=True,
                reps=3,
                mem_reps=1,
                memory="inprocess",
                organism_reps=3,
                sweep_samples=1,
                sweep_variants=("single", "knockout_last"),
                batch_questions=4,
                batch_size=2,
            )
            if quick
            else cls()
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def interleaved_times(variants: dict[str, Callable], reps: int, warmup: int = 1):
    """``(wall, cpu)``: seconds per call, wall-clock and this process's CPU time, after
    ``warmup`` untimed calls each, over ``reps`` rounds of one call per variant, the order
    rotated every round."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            gc.collect()
            cpu_start, start = time.process_time(), time.perf_counter()
            result = variants[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
            del result
    return wall, cpu


def ratio_summary(times: dict[str, list[float]], num: str, den: str, cpu: dict | None = None) -> dict:
    """The median over rounds of the within-round wall-clock ratio, and beside it the ratio of
    the medians and (with ``cpu``) the same median ratio of process CPU times, which the
    background load disturbs less when torch runs one thread."""
    per_round = [a / b for a, b in zip(times[num], times[den])]
    out = {
        "ratio": statistics.median(per_round),
        "per_round": [round(x, 4) for x in per_round],
        "ratio_of_medians": statistics.median(times[num]) / statistics.median(times[den]),
        f"{num}_median_s": statistics.median(times[num]),
        f"{den}_median_s": statistics.median(times[den]),
    }
    if cpu is not None:
        out["cpu_time_ratio"] = statistics.median(a / b for a, b in zip(cpu[num], cpu[den]))
        out[f"{num}_median_cpu_s"] = statistics.median(cpu[num])
        out[f"{den}_median_cpu_s"] = statistics.median(cpu[den])
    return out


def loadavg() -> list | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info(settings: Settings) -> dict:
    """Platform, CPU, library versions, the git commit and the load at the start."""
    import nnsight
    import transformers

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as handle:
            cpu_model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), None)
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "nnsight": nnsight.__version__,
        "git_commit": commit,
        "torch_threads": settings.threads,
        "loadavg_at_start": loadavg(),
    }


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def clean(value):
    """JSON-ready: non-finite floats become null, tuples lists, tensors lists."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, torch.Tensor):
        return clean(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        return clean(float(value))
    except (TypeError, ValueError):
        return str(value)


def emit(result: dict, json_out: str | None) -> None:
    """Print a benchmark's result object as JSON and, with ``json_out``, write it there too."""
    text = json.dumps(result, indent=2)
    print(text)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(text + "\n")
