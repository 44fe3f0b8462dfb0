"""The command line's default torch threads on a busy machine, side by side with the fixed counts.

Run from the repository root::

    .venv/bin/python benchmarks/threads.py [--rounds 2] [--burners 1] [--json-out FILE]

With ``--burners`` busy-looping processes keeping cores occupied (the "busy machine"), it times
``interp quickstart --model organism`` as a whole process with ``OMP_NUM_THREADS`` unset (the
command line picks the idle cores: :mod:`interp.threads`), set to 1, and set to the core count
(torch's own default), in interleaved rounds, and reports each variant's median and its ratio
to one thread.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: the repository, not benchmarks/, first
    sys.path.insert(0, str(REPO))

from benchmarks.harness import emit  # noqa: E402


def _burn() -> None:  # pragma: no cover - runs in a child process until killed
    while True:
        pass


def _time(env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "interp.cli", "quickstart", "--model", "organism"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--burners", type=int, default=1, help="busy processes keeping cores occupied")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    variants = {
        "unset (interp picks)": base,
        "1": {**base, "OMP_NUM_THREADS": "1"},
        f"{cores} (torch's default)": {**base, "OMP_NUM_THREADS": str(cores)},
    }
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(args.burners)]
    for burner in burners:
        burner.start()
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        _time(variants["1"])  # warm-up: the organism's directory is built once
        for round_index in range(args.rounds):
            names = list(variants)
            names = names[round_index % len(names) :] + names[: round_index % len(names)]  # rotate the order
            for name in names:
                times[name].append(_time(variants[name]))
                print(f"round {round_index}: {name}: {times[name][-1]:.1f} s", file=sys.stderr, flush=True)
    finally:
        for burner in burners:
            burner.terminate()
    one = statistics.median(times["1"])
    result = {
        "benchmark": "interp quickstart --model organism, threads on a busy machine",
        "cores": cores,
        "burners": args.burners,
        "load_average_after": list(os.getloadavg()),
        "seconds": {name: [round(t, 1) for t in values] for name, values in times.items()},
        "median_ratio_to_one_thread": {name: round(statistics.median(v) / one, 2) for name, v in times.items()},
    }
    emit(result, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
