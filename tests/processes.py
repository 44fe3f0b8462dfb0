"""Helpers for tests that need real processes and file systems: a Python child process, a line it
prints, a private mount namespace with small or read-only tmpfs mounts, and a byte snapshot of files."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
}


def snapshot(*paths: Path) -> dict:
    """Every file under ``paths`` (files or directories) with its bytes: to prove nothing changed."""
    out = {}
    for path in paths:
        path = Path(path)
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                out[str(file)] = file.read_bytes() if file.is_file() else None
        elif path.exists():
            out[str(path)] = path.read_bytes()
        else:
            out[str(path)] = "absent"
    return out


def error_line(error: BaseException) -> str:
    """The error's message, asserted to be one non-empty line."""
    text = str(error)
    assert "\n" not in text and text
    return text


def start_python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def wait_for_line(process: subprocess.Popen, expected: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.strip() == expected:
            return line
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError(f"the helper process never printed {expected!r}: {process.stderr.read()[-2000:]}")


def in_mount_namespace(script: str, mounts: dict[str, str], *args: str, timeout: float = 300) -> dict:
    """Run Python ``script`` in a private mount namespace where each directory of ``mounts``
    is a fresh tmpfs with those mount options (e.g. ``"size=256k"``, ``"ro,size=64k"``).

    The mounts vanish with the process. Root uses ``unshare -m``; other users a user
    namespace (``unshare -rm``). The script prints one JSON object, returned here.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs util-linux unshare to mount a small or read-only tmpfs")
    flags = ["-m"] if os.geteuid() == 0 else ["-r", "-m"]
    setup = " && ".join(f"mkdir -p {d} && mount -t tmpfs -o {o} tmpfs {d}" for d, o in mounts.items())
    command = [
        unshare,
        *flags,
        "sh",
        "-c",
        f'{setup} && exec {shlex.quote(sys.executable)} -c "$0" "$@"',
        textwrap.dedent(script),
        *map(str, args),
    ]
    result = subprocess.run(command, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 and result.stderr.startswith(("mount", "unshare", "mkdir")):
        pytest.skip(f"cannot mount a tmpfs in a private namespace here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
