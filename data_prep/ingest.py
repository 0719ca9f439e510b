"""``vlp-prep ingest``: turn image-text collections into WebDataset shards, resumably, streaming,
on one machine or split across many.

**Chunks** are the unit of work: each input is cut into ranges of ``shard_samples`` consecutive
records in its reader's order (``data_prep.readers.ranges``: Parquet row-group metadata, a sparse
byte-offset pass over CSV/JSONL, a count for listings), numbered across inputs in input order.
Chunk ``c`` is written as shard ``pattern % c`` (with ``shard_bytes``, as ``STEM-0.tar``,
``STEM-1.tar``, ...) and each sample's key is its record's position in the whole input (earlier
inputs' record counts plus its row). So shard names and keys do not depend on how the work is
split, and nothing holds more than one chunk's records: memory is flat in the number of records.

A chunk task (:func:`run_chunk_task`) streams its records through the checks of
``data_prep.ingest_process`` (captions, bytes, header: pixel cap, size, aspect ratio), decodes,
resizes and encodes them, writes its shard atomically (a temporary name renamed when complete),
then its done marker ``ingest_state/<shard>.json`` (counts; with ``dedup``, a ``.sha256`` sidecar
of every written sample's source hash first). A task whose marker is there is done: a killed run
resumes without duplicating or losing a sample, and its shards are byte-identical to an
uninterrupted run's. ``seed`` shuffles the records inside each chunk (seeded by seed and chunk);
the training loader shuffles shards and samples again.

:func:`finalize` turns the markers into ``sizes.json`` and ``stats.json`` (and
``classnames.txt``); with ``dedup`` it first streams the sidecars in key order with one seen-set
(about 100 bytes per sample) and rewrites, atomically, only the shards that hold a later copy of
an image already kept (the first in key order is kept, counted as ``duplicate``). It is
idempotent and safe to kill.

**Engines.** :func:`list_chunk_tasks`, :func:`run_chunk_task` and :func:`finalize` are what an
engine runs: the local process pool (``workers``) by default, Ray with ``engine='ray'``
(``data_prep.engines``). **Partitions**: ``part=(i, n)`` runs only chunks ``c % n == i`` and does
not finalize; ``vlp-prep merge-stats --output DIR`` checks every chunk is done (naming those that
are not) and finalizes, so n independent jobs (a SLURM array, a Kubernetes indexed job) write
exactly the shards one job writes.

``ingest.json`` holds the options that decide the bytes and the chunk list (inputs with their
record counts and sizes); every run and part checks it, and refuses with the difference named when
the options or the input changed. A class-per-folder input (``imagefolder``) also gets
``classnames.txt`` and a ``cls`` member in every sample. An ingest that writes no sample raises
:class:`EmptyIngestError` saying, per input, what layout its format expects and what was found.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_prep.engines import run_tasks
from data_prep.ingest_chunks import (BAD_INPUT, CLASSNAMES_NAME, MANIFEST_LAYOUT, MANIFEST_NAME, STATE_DIR,  # noqa: F401
                                     STATS_NAME, ChunkTask, EmptyIngestError, IngestError, _cached_inputs, done_state,
                                     list_chunk_tasks, open_inputs, run_chunk_task, shared_classnames)
from data_prep.ingest_finalize import empty_message, finalize  # noqa: F401
from data_prep.ingest_options import IngestOptions
from data_prep.readers import OpenedInput
from vlp.utils.atomic import write_json_atomic


def _manifest(opts: IngestOptions, inputs: list[OpenedInput], tasks: list[ChunkTask], counts: list[int]
              ) -> dict[str, Any]:
    return {"layout": MANIFEST_LAYOUT, "options": opts.fingerprint(), "chunks": len(tasks),
            "inputs": [{"path": str(inp.path), "format": inp.format, "records": n,
                        "bytes": inp.path.stat().st_size if inp.path.is_file() else None}
                       for inp, n in zip(inputs, counts)]}


def _check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    path = out / MANIFEST_NAME
    if not path.is_file():
        if any(out.glob("*.tar")):
            raise IngestError(f"{out} already holds .tar files from something else; use a new --output")
        write_json_atomic(path, manifest)
        return
    old = json.loads(path.read_text())
    if old != json.loads(json.dumps(manifest)):
        diff = sorted(k for k in set(old.get("options", {})) | set(manifest["options"])
                      if old.get("options", {}).get(k) != manifest["options"].get(k))
        what = f"options {', '.join(diff)} differ" if diff else "the input records differ"
        raise IngestError(f"{out} holds an ingest made with different settings ({what}); "
                          "use a new --output or --overwrite")


def clear_output(out: Path, opts: IngestOptions) -> None:
    """Delete what an earlier ingest wrote in ``out`` (shards, markers, sizes, stats, manifest)."""
    glob = re.sub(r"%0?\d*d", "*", opts.pattern)
    for path in [*out.glob(glob), *out.glob(f".{glob}.*.tmp"), *(out / STATE_DIR).glob("*")]:
        if path.is_file():
            path.unlink()
    for name in (MANIFEST_NAME, STATS_NAME, CLASSNAMES_NAME, "sizes.json"):
        (out / name).unlink(missing_ok=True)


def parse_part(text: str) -> tuple[int, int]:
    """'i/N' (0 <= i < N) -> (i, N); ValueError otherwise."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"--part must be i/N with 0 <= i < N (e.g. 0/8), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def run_ingest(opts: IngestOptions, *, overwrite: bool = False, progress: bool = True,
               part: tuple[int, int] | None = None, engine: str = "local", address: str | None = None
               ) -> dict[str, Any]:
    """List the chunks, write those not done (all, or part ``(i, n)``'s), then finalize; returns
    the stats (for a part: its own counts, without finalizing)."""
    opts.validate()
    started = time.monotonic()
    out = Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        if part is not None:
            raise ValueError("--overwrite with --part would delete the other parts' shards; clear the output once")
        clear_output(out, opts)
    inputs = _cached_inputs(opts)
    shared_classnames(inputs)  # different class lists refuse before any work
    tasks, counts = list_chunk_tasks(opts, inputs)
    _check_manifest(out, _manifest(opts, inputs, tasks, counts))
    mine = tasks if part is None else [t for t in tasks if t.index % part[1] == part[0]]
    pending = [t for t in mine if done_state(out, t, opts.dedup) is None]
    bar = tqdm(total=sum(t.range.count for t in pending), desc="chunks", unit="rec", disable=not progress)
    states = []
    for state in run_tasks(engine, run_chunk_task, pending, opts, workers=opts.workers, address=address):
        states.append(state)
        bar.update(state["planned"])
    bar.close()
    if part is not None:
        done = [done_state(out, t, opts.dedup) for t in mine]
        return {"part": f"{part[0]}/{part[1]}", "chunks": len(mine), "chunks_written": len(pending),
                "samples_written": sum(s["written"] for s in done if s), "seconds": round(time.monotonic() - started, 3)}
    return finalize(opts, tasks, inputs, written=len(pending), started=started)


def merge_stats(output: str | Path, *, workers: int = 1) -> dict[str, Any]:
    """Finalize the partitioned ingest in ``output`` (its ingest.json names the options and input)."""
    out = Path(output)
    manifest_path = out / MANIFEST_NAME
    if not manifest_path.is_file():
        raise IngestError(f"{out} holds no {MANIFEST_NAME}: not an ingest output (run ingest first)")
    manifest = json.loads(manifest_path.read_text())
    opts = IngestOptions(**manifest["options"], output=str(out), workers=workers)
    inputs = _cached_inputs(opts)
    tasks, counts = list_chunk_tasks(opts, inputs)
    _check_manifest(out, _manifest(opts, inputs, tasks, counts))
    return finalize(opts, tasks, inputs)


