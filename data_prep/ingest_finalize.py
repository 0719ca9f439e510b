"""Finishing an ingest: exact dedup over the whole output, then sizes.json, stats.json and
classnames.txt from every chunk's done marker (``data_prep.ingest`` explains the design).

Dedup streams the chunks' ``.sha256`` sidecars (``KEY SHA256 SHARD`` lines in key order) in chunk
order with one set of 32-byte digests (about 100 bytes per kept sample in CPython: 1 GB per 10
million distinct images), keeps the first sample of each digest in key order and rewrites, each
atomically, only the shards holding a later copy. Rewriting is idempotent (a shard without the
dropped keys is left alone), so a second finalize changes nothing and a killed one is redone.
"""

from __future__ import annotations

import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from data_prep.ingest_chunks import (CLASSNAMES_NAME, STATS_NAME, ChunkTask, _cached_inputs, _state_path,
                                     _sweep_temporaries, done_state, list_chunk_tasks, shared_classnames)
from data_prep.ingest_errors import EmptyIngestError, IngestError
from data_prep.ingest_options import IngestOptions
from data_prep.readers import OpenedInput, layout_mismatch
from data_prep.shard_writer import write_sizes_json, write_text_atomic
from vlp.utils.atomic import atomic_path, write_json_atomic


def _duplicates(out: Path, tasks: list[ChunkTask]) -> dict[str, dict[str, set[str]]]:
    """{chunk name: {shard name: keys to drop}}: every sample whose source hash an earlier key
    (over all chunks, in key order) already has."""
    seen: set[bytes] = set()
    drop: dict[str, dict[str, set[str]]] = {}
    for task in tasks:
        for line in _state_path(out, task.name, ".sha256").read_text().splitlines():
            key, sha, shard = line.split(" ")
            digest = bytes.fromhex(sha)
            if digest in seen:
                drop.setdefault(task.name, {}).setdefault(shard, set()).add(key)
            else:
                seen.add(digest)
    return drop


def _drop_samples(path: Path, keys: set[str]) -> None:
    """Rewrite the shard at ``path`` without the samples ``keys``, atomically; a no-op when none is
    there. The kept members' bytes (headers and data) are copied as they are, and the archive ends
    as tarfile ends one, so the result is the shard ShardWriter writes for the kept samples."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    if not any(m.name.split(".", 1)[0] in keys for m in members):
        return
    with atomic_path(path) as tmp, open(path, "rb") as src, open(tmp, "wb") as dst:
        for member in members:
            if member.name.split(".", 1)[0] in keys:
                continue
            src.seek(member.offset)  # the member's first header (its PAX header, if any)
            dst.write(src.read(member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                               - member.offset))
        dst.write(bytes(2 * tarfile.BLOCKSIZE))  # the end-of-archive blocks, padded to a whole record
        dst.write(bytes(-dst.tell() % tarfile.RECORDSIZE))


def finalize(opts: IngestOptions, *, tasks: list[ChunkTask] | None = None, written: int = 0,
             started: float | None = None) -> dict[str, Any]:
    """sizes.json, stats.json and classnames.txt from every chunk's marker, after exact dedup over
    the whole output (``opts.dedup``); returns the stats. IngestError naming the chunks not done
    yet (and their parts), or when ``ingest.json`` is another ingest's; EmptyIngestError when no
    sample was written. ``tasks``: ``list_chunk_tasks(opts)`` when the caller has it already;
    ``written`` / ``started``: this run's chunk count and start, for the stats."""
    started = time.monotonic() if started is None else started
    out = Path(opts.output)
    tasks = list_chunk_tasks(opts) if tasks is None else tasks
    inputs = _cached_inputs(opts)
    states = {t.name: done_state(out, t, opts.dedup) for t in tasks}
    missing = [t for t in tasks if states[t.name] is None]
    if missing:
        names = ", ".join(t.name for t in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise IngestError(f"{len(missing)} of {len(tasks)} chunks of {out} are not done ({names}, chunk indices "
                          f"{', '.join(str(t.index) for t in missing[:8])}): run the parts that hold them "
                          "(--part i/N holds chunks c with c % N == i)")
    for task in tasks:  # temporaries of a killed rewrite (every chunk is done: no task writes now)
        _sweep_temporaries(out, task)
    skipped: Counter = Counter()
    dropped: Counter = Counter()
    sizes: dict[str, int] = {}
    drop = _duplicates(out, tasks) if opts.dedup else {}
    for task in tasks:
        state = states[task.name]
        assert state is not None
        skipped.update(state["skipped"])
        dropped.update(state.get("dropped_captions", {}))
        for shard, count in state["shards"].items():
            gone = drop.get(task.name, {}).get(shard, set())
            if gone:
                _drop_samples(out / shard, gone)
                skipped["duplicate"] += len(gone)
            sizes[shard] = count - len(gone)  # a shard dedup emptied stays (an empty tar), listed with 0
    write_sizes_json(out, sizes)
    classnames = shared_classnames(inputs)
    if classnames is not None:
        write_text_atomic(out / CLASSNAMES_NAME, "".join(f"{name}\n" for name in classnames))
    stats = {
        "inputs": [{"path": str(inp.path), "format": inp.format} for inp in inputs],
        "classes": len(classnames) if classnames is not None else None,
        "input_records": sum(t.range.count for t in tasks),
        "samples_written": sum(sizes.values()),
        "skipped": dict(sorted(skipped.items())),
        "skipped_total": sum(skipped.values()),
        "dropped_captions": dict(sorted(dropped.items())),
        "bytes": sum((out / name).stat().st_size for name in sizes),
        "shards": len(sizes),
        "chunks": len(tasks),
        "shards_written": written,
        "shards_reused": len(tasks) - written,
        "seconds": round(time.monotonic() - started, 3),
        "options": opts.fingerprint(),
    }
    write_json_atomic(out / STATS_NAME, stats)
    if not stats["samples_written"]:
        raise EmptyIngestError(empty_message(inputs, stats), stats)
    return stats


def empty_message(inputs: list[OpenedInput], stats: dict[str, Any]) -> str:
    """Why nothing was written: the skip counts, then per input the layout expected and what was found."""
    skipped = ", ".join(f"{k}={v}" for k, v in stats["skipped"].items()) or "none"
    lines = [f"wrote 0 samples from {stats['input_records']} input records (skipped: {skipped})"]
    for inp in inputs:
        lines.append(f"  {inp.path}: read as {inp.format}; {layout_mismatch(inp.path, inp.format)}")
        if inp.format == "folder" and stats["skipped"].get("missing_caption"):
            lines.append("  (a class-per-folder tree without captions reads as imagefolder: DIR/<class>/*.jpg, "
                         "no .txt anywhere, or pass --format imagefolder)")
    return "\n".join(lines)
