"""A stand-in task for checking an engine (tests, a new cluster): :func:`write_probe` writes one
small file the way ingest's chunk task writes a shard (a temporary name renamed when complete,
leftovers of a dead attempt swept first) and can fail on purpose. It lives in the project, not in
a test file, because engine workers import tasks by module (they cannot import ``tests/``).

Check that a cluster's workers run this project's code::

    from data_prep.engines import run_tasks
    from data_prep.engines.selftest import ProbeTask, write_probe
    print(list(run_tasks("ray", write_probe, [ProbeTask("a")], "/shared/dir", address="auto")))
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

CRASHES = ("", "raise-once", "exit-once", "raise-always")


@dataclass(frozen=True)
class ProbeTask:
    """Write file ``name``; ``crash``: '' (none), 'raise-once' / 'exit-once' (the first attempt
    leaves a partial temporary file, then raises / kills its worker process), 'raise-always'."""

    name: str
    crash: str = ""


class ProbeError(RuntimeError):
    """The failure a probe task raises on purpose."""


def probe_content(name: str) -> bytes:
    return f"probe {name}\n".encode() * 8


def _attempt(out: Path, name: str) -> int:
    """Count this attempt in ``out/.attempts/<name>`` (one byte per attempt); returns its number."""
    log = out / ".attempts" / name
    log.parent.mkdir(exist_ok=True)
    with open(log, "ab") as f:
        f.write(b".")
    return log.stat().st_size


def write_probe(task: ProbeTask, out_dir: str) -> dict:
    """Write ``out_dir/<task.name>`` atomically; returns ``{"name", "written", "bytes"}``.
    A file already there is done (an idempotent task): it is counted, not rewritten."""
    out = Path(out_dir)
    final = out / task.name
    if final.exists():
        return {"name": task.name, "written": 1, "bytes": final.stat().st_size}
    attempt = _attempt(out, task.name)
    for stale in out.glob(f".{task.name}.*.tmp"):  # what a dead attempt left
        stale.unlink()
    tmp = out / f".{task.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_bytes(probe_content(task.name)[:5])
    if task.crash == "raise-always" or (task.crash == "raise-once" and attempt == 1):
        raise ProbeError(f"probe {task.name} fails on purpose (attempt {attempt})")
    if task.crash == "exit-once" and attempt == 1:
        os._exit(17)  # the worker process dies mid-write, as a kill or the OOM killer would do it
    tmp.write_bytes(probe_content(task.name))
    os.replace(tmp, final)
    return {"name": task.name, "written": 1, "bytes": final.stat().st_size}


def worker_code(_task: object) -> dict:
    """Where a worker imports the project from (``data_prep.__file__``) and its pid."""
    import data_prep

    return {"data_prep": data_prep.__file__, "pid": os.getpid()}
