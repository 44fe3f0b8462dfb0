"""Peak resident memory of one call, read from the kernel, in this process or a fresh one.

torch's CPU allocator is invisible to ``tracemalloc``, so we read the kernel's view of the
process: ``VmHWM`` (peak resident set) from ``/proc/self/status``, reset to the current RSS
just before the measured call by writing ``5`` to ``/proc/self/clear_refs``. For the reset
to mean anything, freed memory must leave the process: we set glibc's
``M_MMAP_THRESHOLD`` to 64 KiB (``mallopt``, which also stops glibc from raising it
dynamically) so every tensor buffer of 64 KiB or more is its own ``mmap`` and is returned
on free, and call ``malloc_trim(0)`` before each measurement. :func:`calibrate_memory`
applies the method to a plain 64 MiB allocation (it reads 64.0).

:func:`run_child` runs a benchmark's memory measurement in a fresh Python process (with the
mmap threshold and thread count in its environment) and reads back the one result line it
prints (:func:`report_child_result`); :func:`fresh_process_peak` is what that child
measures. Without ``/proc/self/clear_refs`` it falls back to ``ru_maxrss`` of a process that
runs the call once without a warm-up (stated in ``memory_method``).
"""

from __future__ import annotations

import ctypes
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from collections.abc import Callable

import torch

from .harness import REPO

MiB = 1024 * 1024
CHILD_MARKER = "BENCH_CHILD_RESULT "
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 * 1024


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def release_freed_memory_to_os() -> bool:
    """glibc: buffers >= 64 KiB get their own mmap (returned on free); trim the heap now."""
    libc = _libc()
    if libc is None:
        return False
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    libc.malloc_trim(0)
    return True


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def can_reset_peak() -> bool:
    return os.path.exists("/proc/self/status") and reset_peak()


def model_bytes(model) -> int:
    """Bytes of the model's parameters and buffers (shared storage counted once)."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


def measure_peak(fn: Callable, reps: int) -> dict:
    """Peak RSS during ``fn()`` (VmHWM after a reset), ``reps`` times; call after a warm-up."""
    peaks, baselines = [], []
    for _ in range(reps):
        gc.collect()
        release_freed_memory_to_os()
        baseline = rss_bytes()
        if not reset_peak():
            raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs)")
        result = fn()
        peaks.append(_status_kb("VmHWM") * 1024)
        baselines.append(baseline)
        del result
    peak, baseline = statistics.median(peaks), statistics.median(baselines)
    return {
        "peak_rss_mb": peak / MiB,
        "baseline_rss_mb": baseline / MiB,
        "activation_peak_mb": (peak - baseline) / MiB,
        "peaks_mb": [round(p / MiB, 1) for p in peaks],
        "activation_peaks_mb": [round((p - b) / MiB, 1) for p, b in zip(peaks, baselines)],
    }


def calibrate_memory() -> dict:
    """The method on a known size: the measured peak of allocating 64 MiB (should read ~64)."""
    measured = measure_peak(lambda: torch.ones(16 * MiB), 1)["activation_peak_mb"]
    return {"allocated_mb": 64.0, "measured_mb": measured}


def fresh_process_peak(build: Callable[[], tuple[Callable, int]], reps: int) -> dict:
    """In a process that has imported its libraries and nothing else: the resident set of the
    libraries, then ``build()`` (returns ``(fn, weights_bytes)``), one warm-up call of ``fn``
    and the median peak of ``reps`` calls."""
    use_hwm = can_reset_peak()
    release_freed_memory_to_os()
    gc.collect()
    libraries = rss_bytes() if os.path.exists("/proc/self/status") else 0
    fn, weights = build()
    result = {"weights_mb": weights / MiB, "libraries_rss_mb": libraries / MiB}
    if use_hwm:
        fn()  # warm-up: lazy initialisation, nnsight's source instrumentation
        result["calibration"] = calibrate_memory()
        result.update(measure_peak(fn, reps))
        result["memory_method"] = "VmHWM after clear_refs reset, fresh process, after one warm-up call"
    else:  # no reset: one call in a process that has not run it before
        import resource

        gc.collect()
        release_freed_memory_to_os()
        baseline = rss_bytes() if os.path.exists("/proc/self/status") else 0
        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result.update(
            {
                "peak_rss_mb": peak / MiB,
                "baseline_rss_mb": baseline / MiB,
                "activation_peak_mb": (peak - baseline) / MiB,
                "memory_method": "ru_maxrss of a fresh process, one call, no warm-up",
            }
        )
    return result


def report_child_result(result: dict) -> None:
    """The child's side of :func:`run_child`: its one result line on stdout."""
    print(CHILD_MARKER + json.dumps(result), flush=True)


def run_child(script: Path, args: list[str], threads: int, what: str) -> dict:
    """Run ``python script *args`` in a fresh process (glibc mmap threshold and thread counts
    in its environment) and return the result it reported."""
    env = dict(
        os.environ,
        MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD_BYTES),
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
    )
    done = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, cwd=str(REPO))
    lines = [line for line in done.stdout.splitlines() if line.startswith(CHILD_MARKER)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"memory child {what} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(CHILD_MARKER) :])
