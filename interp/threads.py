"""How many CPU threads torch should use when the user has not said (``OMP_NUM_THREADS``).

torch starts one thread per core; on a machine whose cores are busy with other work a
thread the scheduler parks makes every small operation wait a time slice, so the command
line starts with as many threads as there are idle cores (at least one): the fewer of the
idle share measured from the kernel's CPU counters over a short interval and the cores the
one-minute load average leaves free (a bursty load can look idle for a moment).
"""

from __future__ import annotations

import os
import sys
import time

#: the interval over which the idle share of the cores is measured
SAMPLE_SECONDS = 0.1


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cpu_times() -> tuple[int, int] | None:
    """``(idle, total)`` jiffies of all CPUs from ``/proc/stat``; None where it is not readable."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields)


def idle_cores(seconds: float = SAMPLE_SECONDS) -> float | None:
    """How many cores' worth of CPU went unused over ``seconds`` (None where it cannot be read)."""
    before = _cpu_times()
    if before is None:
        return None
    time.sleep(seconds)
    after = _cpu_times()
    if after is None or after[1] <= before[1]:
        return None
    share = (after[0] - before[0]) / (after[1] - before[1])
    return share * (os.cpu_count() or 1)


def free_cores() -> float | None:
    """The idle cores now, no more than the one-minute load average leaves free (None if unknown)."""
    idle = idle_cores()
    if hasattr(os, "getloadavg"):
        loaded = (os.cpu_count() or 1) - os.getloadavg()[0]
        idle = loaded if idle is None else min(idle, loaded)
    return idle


def default_threads(n_cores: int | None = None, idle: float | None = None) -> int:
    """Threads for torch: the free cores (rounded, at least 1, at most this process's cores)."""
    n_cores = cores() if n_cores is None else n_cores
    idle = free_cores() if idle is None else idle
    if idle is None:
        return n_cores
    return max(1, min(n_cores, int(idle + 0.5)))


def set_default_threads() -> int | None:
    """Unless ``OMP_NUM_THREADS`` is set: set it (and torch's count, if torch is loaded) to
    :func:`default_threads`; returns the count chosen (None when the user chose)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    n = default_threads()
    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return n
