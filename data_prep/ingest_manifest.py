"""``ingest.json``: what an ingest output was made from, checked by every run, part and merge.

It holds the options that decide the bytes (``IngestOptions.fingerprint``) and the chunk list:
per input its path, format, record count, size and modification time (files) and its ranges
(``[start, count, offset, line]`` per chunk, chunks numbered across inputs in order). No image is
read to make it. A run whose manifest differs from the one in its output is refused with the
difference named (an option, an input changed since, another layout), so N independent parts
cannot mix two ingests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from data_prep.ingest_errors import IngestError
from data_prep.readers import OpenedInput, RecordRange
from vlp.utils.atomic import write_json_atomic

MANIFEST_NAME = "ingest.json"
MANIFEST_LAYOUT = "chunks-2"
"""The layout: chunks of shard_samples records, one shard each, keys = input positions."""
INPUT_FIELDS = ("path", "format", "records", "bytes", "mtime_ns", "ranges")


def _input_entry(opened: OpenedInput, ranges: Sequence[RecordRange]) -> dict[str, Any]:
    stat = opened.path.stat() if opened.path.is_file() else None
    return {"path": str(opened.path), "format": opened.format, "records": sum(r.count for r in ranges),
            "bytes": stat.st_size if stat else None, "mtime_ns": stat.st_mtime_ns if stat else None,
            "ranges": [[r.start, r.count, r.offset, r.line] for r in ranges]}


def build_manifest(fingerprint: dict[str, Any], inputs: Sequence[OpenedInput],
                   ranges: Sequence[Sequence[RecordRange]]) -> dict[str, Any]:
    """The manifest of an ingest with options ``fingerprint`` over ``inputs`` cut into ``ranges``."""
    return {"layout": MANIFEST_LAYOUT, "options": fingerprint, "chunks": sum(len(r) for r in ranges),
            "inputs": [_input_entry(inp, rngs) for inp, rngs in zip(inputs, ranges)]}


def manifest_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """What differs between two manifests, in words (None when they are the same)."""
    if old.get("layout") != new["layout"]:
        return f"it was written by another ingest layout ({old.get('layout')!r}, this one writes {new['layout']!r})"
    options = sorted(k for k in set(old.get("options", {})) | set(new["options"])
                     if old.get("options", {}).get(k) != new["options"].get(k))
    if options:
        return f"options {', '.join(options)} differ"
    old_inputs = old.get("inputs", [])
    if [i.get("path") for i in old_inputs] != [i["path"] for i in new["inputs"]]:
        return f"the inputs differ ({[i.get('path') for i in old_inputs]} then, {[i['path'] for i in new['inputs']]} now)"
    for was, now in zip(old_inputs, new["inputs"]):
        changed = [f for f in INPUT_FIELDS if was.get(f) != now.get(f)]
        if changed:
            what = ", ".join(f if f == "ranges" else f"{f} {was.get(f)} -> {now.get(f)}" for f in changed)
            return f"input {now['path']} changed since ({what})"
    if old != new:
        return "the manifests differ"
    return None


def check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` into ``out`` when it has none; else IngestError unless it is the same."""
    path = out / MANIFEST_NAME
    if not path.is_file():
        if any(out.glob("*.tar")):
            raise IngestError(f"{out} already holds .tar files from something else; use a new --output")
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, manifest)
        return
    difference = manifest_difference(json.loads(path.read_text()), json.loads(json.dumps(manifest)))
    if difference:
        raise IngestError(f"{out} holds an ingest made with different settings ({difference}); "
                          "use a new --output or --overwrite")


def read_manifest(out: Path) -> dict[str, Any]:
    """The manifest in ``out``; IngestError when there is none."""
    path = out / MANIFEST_NAME
    if not path.is_file():
        raise IngestError(f"{out} holds no {MANIFEST_NAME}: not an ingest output (run ingest first)")
    return json.loads(path.read_text())
