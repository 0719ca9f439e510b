"""``vlp-prep ingest``: turn image-text collections into WebDataset shards, resumably.

Two phases, both deterministic functions of the input and the options:

1. **Plan** (cheap, no pixel decoding): read every record, shuffle with ``seed`` if given, check
   captions, read the image bytes, hash them, read the header (pixel cap, minimum size, aspect
   ratio), drop exact duplicates (first in plan order kept). The surviving entries get global
   keys (their plan position) and are cut into shards by sample count and estimated bytes.
2. **Shards**: each shard decodes, resizes and encodes its own entries and is written by
   :class:`~data_prep.shard_writer.ShardWriter` under a temporary name, renamed when complete,
   then marked done by ``ingest_state/<shard>.json`` (its counts). Shard ``i`` depends only on
   the plan, so any subset can be (re)written in any order, by any number of workers.

A rerun recomputes the plan, checks it against ``ingest.json`` (same options and the same
records, else it stops), and writes only the shards without a done marker: a killed run resumes
without duplicating or dropping a sample, and its shards are byte-identical to an uninterrupted
run's. ``stats.json`` and ``sizes.json`` are rebuilt from all done markers at the end.

A class-per-folder input (``imagefolder``) also gets ``classnames.txt`` (line i = class i) and a
``cls`` member (the class index as text) in every sample. An ingest that writes no sample raises
:class:`EmptyIngestError` saying, per input, what layout its format expects and what was found.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import random
import re
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Iterator

from tqdm import tqdm

from data_prep.ingest_options import IngestOptions
from data_prep.ingest_process import PlanEntry, Skip, encode_entry, inspect_record
from data_prep.readers import OpenedInput, Record, layout_mismatch, open_reader
from data_prep.readers.base import LABEL_KEY
from data_prep.shard_writer import ShardWriter, encode_json, write_sizes_json, write_text_atomic
from vlp.utils.atomic import write_json_atomic

STATE_DIR = "ingest_state"
MANIFEST_NAME = "ingest.json"
STATS_NAME = "stats.json"
CLASSNAMES_NAME = "classnames.txt"
# Reasons that are bad input (``--strict`` stops on them); the rest are filters the user chose.
BAD_INPUT = frozenset({"missing_file", "missing_caption", "bad_row", "empty_file", "unreadable_image",
                       "truncated_image", "decompression_bomb", "caption_not_utf8", "caption_empty"})


class IngestError(RuntimeError):
    """A ``--strict`` failure or an output folder that belongs to a different ingest."""


class EmptyIngestError(IngestError):
    """The ingest wrote no sample; ``stats`` are the counts (also in stats.json)."""

    def __init__(self, message: str, stats: dict[str, Any]) -> None:
        super().__init__(message)
        self.stats = stats


@dataclass
class ShardTask:
    """Shard ``index`` (file ``name``) holds plan entries ``first``.. ``first + len(entries) - 1``."""

    index: int
    name: str
    first: int
    entries: list[PlanEntry]


def open_inputs(opts: IngestOptions) -> list[OpenedInput]:
    """A reader for every input path, in order (errors name the path and the format)."""
    return [open_reader(path, opts.format, image_column=opts.image_column, caption_column=opts.caption_column,
                        image_root=opts.image_root, caption_template=opts.caption_template)
            for path in opts.inputs]


def shared_classnames(inputs: list[OpenedInput]) -> list[str] | None:
    """The class names of the class-per-folder inputs (all must have the same), or None without any."""
    lists = [(inp.path, inp.classnames) for inp in inputs if inp.classnames is not None]
    for path, names in lists[1:]:
        if names != lists[0][1]:
            raise IngestError(f"class-per-folder inputs {lists[0][0]} and {path} have different classes "
                              f"({lists[0][1]} vs {names}); labels would disagree, so ingest them separately")
    return lists[0][1] if lists else None


def read_records(opts: IngestOptions, inputs: list[OpenedInput] | None = None) -> list[Record]:
    """Every record of every input, in input order, shuffled with ``opts.seed`` when given."""
    records: list[Record] = []
    for opened in open_inputs(opts) if inputs is None else inputs:
        records.extend(opened)
    if opts.seed is not None:
        random.Random(opts.seed).shuffle(records)
    return records


def _fail_or_count(skip: Skip, counts: Counter, strict: bool) -> None:
    if strict and skip.reason in BAD_INPUT:
        raise IngestError(f"{skip.reason}: {skip.name}")
    counts[skip.reason] += 1


@contextmanager
def _mapper(workers: int) -> Iterator[Any]:
    """An ordered ``imap``: the builtin ``map`` for one worker, a process pool's otherwise."""
    if workers <= 1:
        yield lambda fn, items, chunksize=1: map(fn, items)
        return
    with multiprocessing.get_context().Pool(workers) as pool:
        yield pool.imap


def make_plan(records: list[Record], opts: IngestOptions, imap: Any, progress: bool = False
              ) -> tuple[list[PlanEntry], Counter, Counter]:
    """(entries to write, skipped by reason, captions dropped from kept samples by reason)."""
    skipped: Counter = Counter()
    dropped: Counter = Counter()
    entries: list[PlanEntry] = []
    seen: set[str] = set()
    results = imap(partial(inspect_record, opts=opts), records, chunksize=16)
    for result in tqdm(results, total=len(records), desc="plan", unit="rec", disable=not progress):
        if isinstance(result, Skip):
            _fail_or_count(result, skipped, opts.strict)
            continue
        if opts.dedup:
            if result.sha256 in seen:
                skipped["duplicate"] += 1
                continue
            seen.add(result.sha256)
        dropped.update(result.dropped_captions)
        entries.append(result)
    return entries, skipped, dropped


def assign_shards(entries: list[PlanEntry], opts: IngestOptions) -> list[ShardTask]:
    """Cut the plan into consecutive shards of at most ``shard_samples`` entries and, when
    ``shard_bytes`` is set, at most that many estimated bytes (a single larger entry gets its own)."""
    tasks: list[ShardTask] = []
    start, size = 0, 0
    for i, entry in enumerate(entries):
        count = i - start
        if count and (count >= opts.shard_samples or (opts.shard_bytes and size + entry.est_bytes > opts.shard_bytes)):
            tasks.append(ShardTask(len(tasks), opts.pattern % len(tasks), start, entries[start:i]))
            start, size = i, 0
        size += entry.est_bytes
    if start < len(entries):
        tasks.append(ShardTask(len(tasks), opts.pattern % len(tasks), start, entries[start:]))
    return tasks


def plan_digest(entries: Iterable[PlanEntry]) -> str:
    """A SHA-256 over every planned entry's source id and image hash (detects changed input)."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(f"{entry.source_id}\0{entry.sha256}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _samples(task: ShardTask, opts: IngestOptions, skipped: Counter) -> Iterator[dict[str, Any]]:
    for offset, entry in enumerate(task.entries):
        result = encode_entry(entry, opts)
        if isinstance(result, Skip):
            _fail_or_count(result, skipped, opts.strict)
            continue
        data, (width, height) = result
        meta = {"source_id": entry.source_id, "original_width": entry.width, "original_height": entry.height,
                "width": width, "height": height, "captions": entry.captions, **entry.meta}
        sample = {"__key__": f"{task.first + offset:09d}", opts.image_format: data,
                  "txt": entry.captions[0], "json": encode_json(meta)}
        if LABEL_KEY in entry.meta:
            sample["cls"] = str(entry.meta[LABEL_KEY])
        yield sample


def write_shard(task: ShardTask, opts: IngestOptions) -> dict[str, Any]:
    """Write one shard (atomically) and then its done marker; returns the marker's content."""
    out = Path(opts.output)
    for stale in out.glob(f".{task.name}.*.tmp"):  # left by a killed run
        stale.unlink(missing_ok=True)
    skipped: Counter = Counter()
    with ShardWriter(out, opts.pattern, max_count=max(1, len(task.entries)), start_index=task.index,
                     sizes_name=None) as writer:
        writer.write_all(_samples(task, opts, skipped))
    written = writer.total
    state = {"name": task.name, "planned": len(task.entries), "written": written,
             "skipped": dict(sorted(skipped.items())),
             "bytes": (out / task.name).stat().st_size if written else 0}
    write_json_atomic(out / STATE_DIR / f"{task.name}.json", state)
    return state


def _done_state(out: Path, task: ShardTask) -> dict[str, Any] | None:
    path = out / STATE_DIR / f"{task.name}.json"
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    if state.get("planned") != len(task.entries) or (state["written"] and not (out / task.name).is_file()):
        return None
    return state


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
    for path in [*out.glob(glob), *out.glob(f".{glob}.*.tmp"), *(out / STATE_DIR).glob("*.json")]:
        path.unlink()
    for name in (MANIFEST_NAME, STATS_NAME, CLASSNAMES_NAME, "sizes.json"):
        (out / name).unlink(missing_ok=True)


def run_ingest(opts: IngestOptions, *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Plan, write the missing shards, then write sizes.json and stats.json; returns the stats."""
    opts.validate()
    started = time.monotonic()
    out = Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        clear_output(out, opts)
    inputs = open_inputs(opts)
    classnames = shared_classnames(inputs)
    records = read_records(opts, inputs)
    with _mapper(opts.workers) as imap:
        entries, skipped, dropped = make_plan(records, opts, imap, progress)
        tasks = assign_shards(entries, opts)
        _check_manifest(out, {"options": opts.fingerprint(), "plan_digest": plan_digest(entries),
                              "planned": len(entries), "shards": len(tasks)})
        states = {t.name: _done_state(out, t) for t in tasks}
        pending = [t for t in tasks if states[t.name] is None]
        reused = len(tasks) - len(pending)
        bar = tqdm(total=sum(len(t.entries) for t in pending), desc="shards", unit="img", disable=not progress)
        for state in imap(partial(write_shard, opts=opts), pending, chunksize=1):
            states[state["name"]] = state
            bar.update(state["planned"])
        bar.close()
    for state in states.values():
        skipped.update(state["skipped"])
    sizes = {name: s["written"] for name, s in states.items() if s["written"]}
    write_sizes_json(out, sizes)
    if classnames is not None:
        write_text_atomic(out / CLASSNAMES_NAME, "".join(f"{name}\n" for name in classnames))
    stats = {
        "inputs": [{"path": str(inp.path), "format": inp.format} for inp in inputs],
        "classes": len(classnames) if classnames is not None else None,
        "input_records": len(records),
        "samples_written": sum(sizes.values()),
        "skipped": dict(sorted(skipped.items())),
        "skipped_total": sum(skipped.values()),
        "dropped_captions": dict(sorted(dropped.items())),
        "bytes": sum(s["bytes"] for s in states.values()),
        "shards": len(sizes),
        "shards_written": len(pending),
        "shards_reused": reused,
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
