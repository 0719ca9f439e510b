"""Ingest's unit of work: chunk tasks (``data_prep.ingest`` explains the design).

:func:`list_chunk_tasks` cuts the input into chunks (and records them in ``ingest.json``),
:func:`run_chunk_task` writes one chunk's shard(s), hash sidecar and done marker, :func:`done_state`
reads a marker back. These, with ``data_prep.ingest_finalize.finalize``, are what an engine
(``data_prep.engines``) runs.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from data_prep.ingest_errors import EmptyIngestError, IngestError  # noqa: F401 (re-exported)
from data_prep.ingest_manifest import MANIFEST_LAYOUT, MANIFEST_NAME, build_manifest, check_manifest  # noqa: F401
from data_prep.ingest_options import IngestOptions
from data_prep.ingest_process import Skip, encode_entry, inspect_record
from data_prep.readers import OpenedInput, Record, RecordRange, open_reader
from data_prep.readers.base import LABEL_KEY
from data_prep.shard_writer import ShardWriter, encode_json, write_text_atomic
from vlp.utils.atomic import write_json_atomic

STATE_DIR = "ingest_state"
STATS_NAME = "stats.json"
CLASSNAMES_NAME = "classnames.txt"
# Reasons that are bad input (``--strict`` stops on them); the rest are filters the user chose.
BAD_INPUT = frozenset({"missing_file", "missing_caption", "bad_row", "empty_file", "unreadable_image",
                       "truncated_image", "decompression_bomb", "caption_not_utf8", "caption_empty"})


@dataclass(frozen=True)
class ChunkTask:
    """Chunk ``index`` (shard ``name``): ``range`` of input ``input_index``, whose first record has
    key ``first_key`` (its position in the whole input)."""

    index: int
    name: str
    input_index: int
    range: RecordRange
    first_key: int


def open_inputs(opts: IngestOptions) -> list[OpenedInput]:
    """A reader for every input path, in order (errors name the path and the format)."""
    return [open_reader(path, opts.format, image_column=opts.image_column, caption_column=opts.caption_column,
                        image_root=opts.image_root, caption_template=opts.caption_template,
                        class_names=opts.class_names)
            for path in opts.inputs]


def shared_classnames(inputs: list[OpenedInput]) -> list[str] | None:
    """The class names of the class-per-folder inputs (all must have the same), or None without any."""
    lists = [(inp.path, inp.classnames) for inp in inputs if inp.classnames is not None]
    for path, names in lists[1:]:
        if names != lists[0][1]:
            raise IngestError(f"class-per-folder inputs {lists[0][0]} and {path} have different classes "
                              f"({lists[0][1]} vs {names}); labels would disagree, so ingest them separately")
    return lists[0][1] if lists else None


_OPENED: dict[tuple, list[OpenedInput]] = {}


def _input_state(path: str) -> tuple:
    try:
        stat = os.stat(path)
    except OSError:
        return (path,)
    return (path, stat.st_size, stat.st_mtime_ns)


def _cached_inputs(opts: IngestOptions) -> list[OpenedInput]:
    """The inputs' readers, built once per process while the inputs are unchanged (a listing
    reader lists its folder once, not once per chunk)."""
    key = (tuple(_input_state(p) for p in opts.inputs), opts.format, opts.image_column, opts.caption_column,
           opts.image_root, opts.caption_template, opts.class_names)
    if key not in _OPENED:
        _OPENED.clear()
        _OPENED[key] = open_inputs(opts)
    return _OPENED[key]


def forget_inputs() -> None:
    """Drop the readers cached in this process (a new run lists its inputs afresh)."""
    _OPENED.clear()


def list_chunk_tasks(opts: IngestOptions) -> list[ChunkTask]:
    """Every chunk of the input, in order; records them in ``opts.output``'s ``ingest.json``, or
    checks them against the one there (IngestError naming what differs: an option, an input
    changed since). Reads no image: Parquet metadata, one offset pass over CSV/JSONL, listings."""
    inputs = _cached_inputs(opts)
    shared_classnames(inputs)  # different class lists refuse before any work
    tasks: list[ChunkTask] = []
    ranges = []
    first = 0
    for i, opened in enumerate(inputs):
        ranges.append(opened.ranges(opts.shard_samples))
        for rng in ranges[-1]:
            tasks.append(ChunkTask(len(tasks), opts.pattern % len(tasks), i, rng, first + rng.start))
        first += sum(r.count for r in ranges[-1])
    check_manifest(Path(opts.output), build_manifest(opts.fingerprint(), inputs, ranges))
    return tasks


def _fail_or_count(skip: Skip, counts: Counter, strict: bool) -> None:
    if strict and skip.reason in BAD_INPUT:
        raise IngestError(f"{skip.reason}: {skip.name}")
    counts[skip.reason] += 1


def _shard_pattern(task: ChunkTask, opts: IngestOptions) -> tuple[str, int]:
    """(ShardWriter pattern, start index) of a chunk's shard(s)."""
    if opts.shard_bytes:
        return task.name[: -len(".tar")] + "-%d.tar", 0
    return opts.pattern, task.index


def _records(task: ChunkTask, opts: IngestOptions) -> Iterable[tuple[int, Record]]:
    """(row in the chunk, record): streamed, or all of the chunk shuffled with ``opts.seed``."""
    records = enumerate(_cached_inputs(opts)[task.input_index].read_range(task.range))
    if opts.seed is None:
        return records
    held = list(records)
    random.Random(f"{opts.seed}/{task.index}").shuffle(held)
    return held


def _samples(task: ChunkTask, opts: IngestOptions, skipped: Counter, dropped: Counter,
             hashes: list[tuple[str, str]]) -> Iterator[tuple[dict[str, Any], int]]:
    """(sample, its estimated encoded bytes) of each record of the chunk that passes."""
    for row, record in _records(task, opts):
        entry = inspect_record(record, opts)
        if isinstance(entry, Skip):
            _fail_or_count(entry, skipped, opts.strict)
            continue
        result = encode_entry(entry, opts)
        if isinstance(result, Skip):
            _fail_or_count(result, skipped, opts.strict)
            continue
        dropped.update(entry.dropped_captions)
        data, (width, height) = result
        meta = {"source_id": entry.source_id, "original_width": entry.width, "original_height": entry.height,
                "width": width, "height": height, "captions": entry.captions, **entry.meta}
        key = f"{task.first_key + row:09d}"
        sample = {"__key__": key, opts.image_format: data, "txt": entry.captions[0], "json": encode_json(meta)}
        if LABEL_KEY in entry.meta:
            sample["cls"] = str(entry.meta[LABEL_KEY])
        hashes.append((key, entry.sha256))
        yield sample, len(data)


def _state_path(out: Path, name: str, suffix: str = ".json") -> Path:
    return out / STATE_DIR / f"{name}{suffix}"


def _sweep_temporaries(out: Path, task: ChunkTask) -> None:
    stem = task.name[: -len(".tar")]
    for stale in out.glob(f".{stem}*.tmp"):  # left by a killed run
        stale.unlink(missing_ok=True)


def run_chunk_task(task: ChunkTask, opts: IngestOptions) -> dict[str, Any]:
    """Write one chunk's shard(s) atomically, then (with ``dedup``) its hash sidecar, then its done
    marker; returns the marker's content. Pure in (task, opts): rerunning it writes the same bytes."""
    out = Path(opts.output)
    _sweep_temporaries(out, task)
    skipped: Counter = Counter()
    dropped: Counter = Counter()
    hashes: list[tuple[str, str]] = []
    pattern, start = _shard_pattern(task, opts)
    with ShardWriter(out, pattern, max_count=max(1, task.range.count), start_index=start, sizes_name=None) as writer:
        size = 0  # a shard ends at the chunk's end or before it would pass shard_bytes
        for sample, nbytes in _samples(task, opts, skipped, dropped, hashes):
            if opts.shard_bytes and size and size + nbytes > opts.shard_bytes:
                writer.end_shard()
                size = 0
            writer.write(sample)
            size += nbytes
    shards = dict(writer.sizes)
    if opts.dedup:
        where = {}
        names = iter(shards)
        name, left = next(names, ""), 0
        for key, _ in hashes:  # samples fill the shards in write order
            if left == 0 and name:
                left = shards[name]
            where[key], left = name, left - 1
            if left == 0:
                name = next(names, "")
        lines = "".join(f"{key} {sha} {where[key]}\n" for key, sha in sorted(hashes))
        write_text_atomic(_state_path(out, task.name, ".sha256"), lines)
    state = {"name": task.name, "planned": task.range.count, "written": writer.total, "shards": shards,
             "skipped": dict(sorted(skipped.items())), "dropped_captions": dict(sorted(dropped.items())),
             "bytes": sum((out / n).stat().st_size for n in shards)}
    write_json_atomic(_state_path(out, task.name), state)
    return state


def done_state(out: Path, task: ChunkTask, dedup: bool = False) -> dict[str, Any] | None:
    """The chunk's done marker when it is complete (its shards and sidecar there), else None."""
    path = _state_path(out, task.name)
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    if state.get("planned") != task.range.count or "shards" not in state:
        return None
    if any(not (out / name).is_file() for name in state["shards"]):
        return None
    if dedup and not _state_path(out, task.name, ".sha256").is_file():
        return None
    return state


