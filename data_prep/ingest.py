"""``vlp-prep ingest``: turn image-text collections into WebDataset shards, resumably, streaming,
on one machine or split across many.

**Chunks** are the unit of work: each input is cut into ranges of at most ``shard_samples``
consecutive records in its reader's order (``data_prep.readers.ranges``: Parquet row-group
metadata, a sparse byte-offset pass over CSV/JSONL, ranges of the listing for folders, image
folders, COCO and img2dataset), numbered across inputs in input order. Chunk ``c`` is written as
exactly one shard, ``pattern % c`` (with ``shard_bytes``: ``STEM-0.tar``, ``STEM-1.tar``, ...), and
each sample's key is its record's position in the whole input (earlier inputs' record counts
plus its row, 9 digits). So shard names and keys do not depend on how the work is split, and
nothing holds more than one chunk's records: memory is flat in the number of records.

A chunk task (:func:`run_chunk_task`) streams its records through the checks of
``data_prep.ingest_process`` (captions, bytes, header: pixel cap, size, aspect ratio), decodes,
resizes and encodes them, writes its shard atomically (a temporary name renamed when complete),
then (with ``dedup``) a ``.sha256`` sidecar of every written sample's source hash, then its done
marker ``ingest_state/<shard>.json`` (counts). A task whose marker is there is done: a killed run
resumes without duplicating or losing a sample, rewriting only the unfinished chunks, and its
shards are byte-identical to an uninterrupted run's.

**Seed.** A global shuffle cannot stream, so ``seed`` shuffles the records inside each chunk
(seeded by seed and chunk index); keys stay input positions, and the training loader shuffles
shards and samples again.

:func:`finalize` turns the markers into ``sizes.json`` and ``stats.json`` (and
``classnames.txt``); with ``dedup`` it first streams the sidecars in chunk order with one seen-set
(about 100 bytes per sample) and rewrites, atomically, only the shards that hold a later copy of
an image already kept (the first in key order is kept, counted as ``duplicate``), so the result
does not depend on the split. It is idempotent and safe to kill.

**Engines** run three functions, whose names and signatures are stable:

- ``list_chunk_tasks(opts: IngestOptions) -> list[ChunkTask]``: every chunk, in order (small,
  picklable frozen dataclasses); records the chunk list in ``ingest.json``, or refuses
  (:class:`IngestError`) an output made with other options or input. Call it once, on the driver.
- ``run_chunk_task(task: ChunkTask, opts: IngestOptions) -> dict``: write one chunk; returns its
  done marker's content (``name, planned, written, shards, skipped, dropped_captions, bytes``).
  Pure and idempotent in (task, opts): run it anywhere, any number of times, in any order.
  Skip tasks whose ``done_state(Path(opts.output), task, opts.dedup)`` is not None to resume.
- ``finalize(opts: IngestOptions) -> dict``: dedup, sizes.json, stats.json, classnames.txt once
  every chunk is done (else IngestError naming the missing chunks); returns the stats.

The local process pool (``workers``) is the default engine, Ray is ``engine='ray'``
(``data_prep.engines``). **Partitions**: ``part=(i, n)`` runs only chunks ``c % n == i``, records
``ingest_state/part-I-of-N.json`` and does not finalize; ``vlp-prep merge-stats --output DIR``
(:func:`merge_stats`) checks every chunk is done (naming the missing chunks and parts) and
finalizes, so n independent jobs (a SLURM array, a Kubernetes indexed job) write exactly the
shards one job writes; one job finalizes itself at its end.

``ingest.json`` (``data_prep.ingest_manifest``) holds the options that decide the bytes and the
chunk list (each input's path, format, records, size, mtime and ranges); every run, part and
merge checks it and refuses with the difference named. A class-per-folder input
(``imagefolder``) also gets ``classnames.txt`` and a ``cls`` member in every sample. An ingest
that writes no sample raises :class:`EmptyIngestError` saying, per input, what layout its format
expects and what was found.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_prep.engines import run_tasks
from data_prep.ingest_chunks import (BAD_INPUT, CLASSNAMES_NAME, STATE_DIR, STATS_NAME, ChunkTask,  # noqa: F401
                                     done_state, forget_inputs, list_chunk_tasks, open_inputs, run_chunk_task)
from data_prep.ingest_errors import EmptyIngestError, IngestError  # noqa: F401 (the public names)
from data_prep.ingest_finalize import empty_message, finalize  # noqa: F401
from data_prep.ingest_manifest import MANIFEST_LAYOUT, MANIFEST_NAME, read_manifest  # noqa: F401
from data_prep.ingest_options import IngestOptions
from vlp.utils.atomic import write_json_atomic

PART_GLOB = "part-*-of-*.json"


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


def _part_path(out: Path, part: tuple[int, int]) -> Path:
    return out / STATE_DIR / f"part-{part[0]:05d}-of-{part[1]:05d}.json"


def _missing_parts(out: Path, error: IngestError, missing_chunks: list[int]) -> IngestError:
    """``error`` (chunks not done) with the parts that hold them named, when the parts that did
    finish recorded one N (``ingest_state/part-I-of-N.json``)."""
    counts = {int(p.stem.rsplit("-", 1)[1]) for p in (out / STATE_DIR).glob(PART_GLOB)}
    if len(counts) != 1:
        return error
    n = counts.pop()
    missing = sorted({c % n for c in missing_chunks})
    parts = ", ".join(f"{i}/{n}" for i in missing)
    return IngestError(f"{error}; parts not finished: {parts} (rerun them: ingest ... --part i/{n})")


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
    forget_inputs()  # list the inputs afresh in this run
    tasks = list_chunk_tasks(opts)  # refuses an output made with other options or input
    mine = tasks if part is None else [t for t in tasks if t.index % part[1] == part[0]]
    pending = [t for t in mine if done_state(out, t, opts.dedup) is None]
    bar = tqdm(total=sum(t.range.count for t in pending), desc="chunks", unit="rec", disable=not progress)
    for state in run_tasks(engine, run_chunk_task, pending, opts, workers=opts.workers, address=address):
        bar.update(state["planned"])
    bar.close()
    if part is not None:
        done = [done_state(out, t, opts.dedup) for t in mine]
        summary = {"part": f"{part[0]}/{part[1]}", "chunks": len(mine), "chunks_written": len(pending),
                   "samples_written": sum(s["written"] for s in done if s),
                   "seconds": round(time.monotonic() - started, 3)}
        write_json_atomic(_part_path(out, part), summary)
        return summary
    return finalize(opts, tasks=tasks, written=len(pending), started=started)


def merge_stats(output: str | Path, *, workers: int = 1) -> dict[str, Any]:
    """Finalize the partitioned ingest in ``output`` (its ingest.json names the options and input):
    IngestError naming the chunks (and parts) not done, else :func:`finalize`'s stats."""
    out = Path(output)
    manifest = read_manifest(out)
    opts = IngestOptions(**manifest["options"], output=str(out), workers=workers)
    forget_inputs()
    tasks = list_chunk_tasks(opts)  # the input must still be the one the parts read
    try:
        return finalize(opts, tasks=tasks)
    except EmptyIngestError:
        raise
    except IngestError as err:
        missing = [t.index for t in tasks if done_state(out, t, opts.dedup) is None]
        if missing:
            raise _missing_parts(out, err, missing) from None
        raise
