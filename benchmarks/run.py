"""Performance benchmarks for issue 5: attention logging without eager attention, nnsight
overhead, fast layer sweeps.

Run from the repository root::

    .venv/bin/python benchmarks/run.py [--quick] [--only NAME ...] [--json-out FILE]

and it prints ONE JSON object (progress goes to stderr). Benchmarks (``--only``), one module
each:

``attention`` (:mod:`benchmarks.attention`)
    ``RecordAttention`` over SDPA vs a plain SDPA forward vs eager ``output_attentions`` on a
    random LLaVA-1.5-architecture model (~1050 tokens): time and peak memory ratios.
``nnsight_overhead`` (:mod:`benchmarks.nnsight_overhead`)
    a trace saving every decoder layer's output on the organism architecture, relative to the
    plain HF forward.
``sweep_speedup`` (:mod:`benchmarks.sweep`)
    ``masking_sweep`` naive over fast on the organism (identical results required), beside the
    counted layer work of both modes.
``generate_sweep_speedup`` (:mod:`benchmarks.sweep`)
    the same with ``scoring="generate"`` (identical predictions required): one ``generate`` per
    condition against restarts plus one batched greedy decode per question.
``clean_pass_batching`` (:mod:`benchmarks.batching`)
    the clean passes of ``--batch-questions`` organism questions at batch 1 and at batch
    ``--batch-size`` (cross-question batching, as ``interp reproduce --batch-size``): forwards per
    question of each (counted) and the wall ratio batch 1 / batch B (equal passes required).

``--quick`` runs the same code on tiny configs in seconds (the smoke test
``tests/test_benchmarks.py`` uses it); its numbers say nothing about performance.

``torch.set_num_threads(--threads)`` (default 1: on a shared 2-core machine a second OpenMP
thread that the scheduler parks makes every small op wait a full time slice; we measured the
organism's forward at 2.8 s with 2 threads and 0.2 s with 1 while another job used both
cores). How times are compared: :mod:`benchmarks.harness`; how peak memory is read (VmHWM
reset through ``/proc/self/clear_refs``, a fresh process per variant by default):
:mod:`benchmarks.memory` and :mod:`benchmarks.attention`.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# run as a script, Python puts benchmarks/ first on the path, where our module names
# (memory, models, sweep, ...) could shadow top-level ones: put the repository there instead
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == HERE:
    sys.path[0] = str(REPO)
elif str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*requires torchvision.*")
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, fields, replace  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from benchmarks.attention import measure_attention, memory_child  # noqa: E402
from benchmarks.batching import measure_batching  # noqa: E402
from benchmarks.harness import Settings, clean, finite, loadavg, log, machine_info  # noqa: E402
from benchmarks.memory import can_reset_peak, report_child_result  # noqa: E402
from benchmarks.models import FULL_WIDE, QUICK_WIDE, WideSpec, organism_samples, organism_vlm  # noqa: E402
from benchmarks.nnsight_overhead import measure_nnsight_overhead  # noqa: E402
from benchmarks.sweep import measure_sweep_speedup  # noqa: E402

BENCHMARKS = ("attention", "nnsight_overhead", "sweep_speedup", "generate_sweep_speedup", "clean_pass_batching")
TARGETS = {
    "record_attention_peak_mem_ratio": 1.25,
    "record_attention_time_ratio": 1.3,
    "nnsight_overhead": 1.1,
}
METHOD = {
    "time": "median over rounds of the within-round ratio; rounds interleave all variants in rotated "
    "order after one warm-up call each; torch.set_num_threads fixed",
    "peak_mem_ratio": "whole-process peak RSS during the call (VmHWM reset via /proc/self/clear_refs; glibc "
    "mmap threshold 64 KiB so freed buffers leave the process) relative to the plain SDPA "
    "forward's",
    "activation_mem_ratio": "(peak RSS - RSS just before the call) relative to the plain SDPA forward's",
}


def run_benchmarks(settings: Settings, only=BENCHMARKS) -> dict:
    """Run the selected benchmarks; the one result object (headline ratios on top, ``details`` below)."""
    torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "interp issue 5: fast layer sweeps and attention logging without eager attention",
        "quick": settings.quick,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
        "machine": machine_info(settings),
        "targets": {k: f"<= {v}" for k, v in TARGETS.items()},
        "method": dict(METHOD),
    }
    details: dict[str, Any] = {}

    if "attention" in only:
        start = time.perf_counter()
        attention = measure_attention(QUICK_WIDE if settings.quick else FULL_WIDE, settings)
        details["attention"] = {"seconds": time.perf_counter() - start, **attention.pop("details")}
        result.update(attention)

    if {"nnsight_overhead", "sweep_speedup", "generate_sweep_speedup", "clean_pass_batching"} & set(only):
        log("organism: building")
        vlm, pristine, label = organism_vlm(settings.quick)
        if "nnsight_overhead" in only:
            start = time.perf_counter()
            overhead = measure_nnsight_overhead(vlm, pristine, label, settings)
            details["nnsight_overhead"] = {"seconds": time.perf_counter() - start, **overhead.pop("details")}
            result.update(overhead)
        del pristine
        gc.collect()
        if "sweep_speedup" in only:
            samples = organism_samples(settings.sweep_samples)
            log(
                f"sweep_speedup: {len(samples)} samples x {len(settings.sweep_variants)} variants x "
                f"{vlm.n_layers} layers, naive vs fast"
            )
            start = time.perf_counter()
            sweep = measure_sweep_speedup(vlm, samples, variants=settings.sweep_variants)
            details["sweep_speedup"] = {"seconds": time.perf_counter() - start, "model": label, **sweep.pop("details")}
            result.update(sweep)
        if "generate_sweep_speedup" in only:
            samples = organism_samples(settings.sweep_samples)
            log(
                f"generate_sweep_speedup: {len(samples)} samples x {len(settings.sweep_variants)} variants x "
                f"{vlm.n_layers} layers, naive vs fast, generation scoring"
            )
            start = time.perf_counter()
            sweep = measure_sweep_speedup(
                vlm, samples, variants=settings.sweep_variants, scoring="generate", key="generate_sweep_speedup"
            )
            details["generate_sweep_speedup"] = {
                "seconds": time.perf_counter() - start,
                "model": label,
                **sweep.pop("details"),
            }
            result.update(sweep)
        if "clean_pass_batching" in only:
            samples = organism_samples(settings.batch_questions)
            log(f"clean_pass_batching: {len(samples)} questions, batch 1 vs batch {settings.batch_size}")
            start = time.perf_counter()
            batching = measure_batching(vlm, samples, batch=settings.batch_size, reps=settings.reps)
            details["clean_pass_batching"] = {
                "seconds": time.perf_counter() - start,
                "model": label,
                **batching.pop("details"),
            }
            result.update(batching)

    result["meets_targets"] = {
        k: (result[k] <= v if finite(result.get(k)) else None) for k, v in TARGETS.items() if k in result
    }
    result["machine"]["loadavg_at_end"] = loadavg()
    result["total_seconds"] = time.perf_counter() - started
    result["details"] = details
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny configs, seconds; a smoke test, not a measurement")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=BENCHMARKS,
        default=None,
        metavar="NAME",
        help=f"run only these benchmarks ({', '.join(BENCHMARKS)})",
    )
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON object to this file")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default 1)")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds of the attention benchmark")
    parser.add_argument("--organism-reps", type=int, default=None, help="timed rounds of the nnsight benchmark")
    parser.add_argument("--mem-reps", type=int, default=None, help="measured calls per memory process")
    parser.add_argument(
        "--memory",
        choices=("subprocess", "inprocess"),
        default=None,
        help="fresh process per variant (default) or in the timing process (--quick's default)",
    )
    parser.add_argument("--keys", choices=("all", "image"), default=None, help="RecordAttention keys (default all)")
    parser.add_argument("--sweep-samples", type=int, default=None)
    parser.add_argument("--batch-questions", type=int, default=None, help="questions of clean_pass_batching")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size of clean_pass_batching")
    parser.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_spec", dest="spec", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_child:
        spec = WideSpec(**{k: v for k, v in json.loads(args.spec).items() if k in {f.name for f in fields(WideSpec)}})
        report_child_result(
            memory_child(args.memory_child, spec, args.keys or "all", args.threads or 1, args.mem_reps or 2)
        )
        return 0

    settings = Settings.for_mode(
        args.quick,
        threads=args.threads,
        reps=args.reps,
        mem_reps=args.mem_reps,
        memory=args.memory,
        keys=args.keys,
        organism_reps=args.organism_reps,
        sweep_samples=args.sweep_samples,
        batch_questions=args.batch_questions,
        batch_size=args.batch_size,
    )
    if settings.memory == "inprocess" and not can_reset_peak():
        settings = replace(settings, memory="subprocess")  # its children fall back to ru_maxrss
    python = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable
    command = " ".join([python, "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
    result = {"command": command, **run_benchmarks(settings, tuple(args.only or BENCHMARKS))}
    text = json.dumps(clean(result), indent=2, allow_nan=False)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
