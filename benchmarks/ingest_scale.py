"""Ingest at scale: a Parquet table of N (path, caption) records, ingested by ``vlp-prep ingest``
as a whole command at 1 and 2 workers, with samples/s and peak memory.

The images repeat a pool of small JPEGs (the work per record is real: read, hash, header, decode,
encode, tar), so the table can hold millions of records without millions of files. Memory is
sampled every 0.1 s over the ingest's process tree (psutil): ``peak_rss_total_mb`` is the largest
sum of the tree's resident sets (shared pages counted per process: an upper bound),
``peak_rss_max_process_mb`` the largest single process. What grows with the number of records
would show here: before chunked ingest the plan held every record. Each run's output is deleted
once measured (200,000 records write 2.4 GB), so the temp folder holds one output at a time;
``--truncate-shards`` also empties each shard as soon as its chunk's done marker is written.

    python benchmarks/ingest_scale.py                          # 200,000 records, 1 and 2 workers
    python benchmarks/ingest_scale.py --records 2000000 --truncate-shards   # ~24 GB of shards otherwise

No anchor: img2dataset downloads from the web, which these machines cannot. Last line: one JSON
object with the figures per worker count.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

POOL = 50


def make_table(root: Path, records: int, seed: int = 0) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    for i in range(POOL):
        w, h = int(rng.integers(48, 96)), int(rng.integers(48, 96))
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
        (root / "img" / f"{i:03d}.jpg").write_bytes(buffer.getvalue())
    path = root / "pairs.parquet"
    writer = None
    step = 100_000
    words = np.array(["red", "blue", "cube", "ball", "on", "a", "table", "next", "to", "small", "big", "dog"])
    for start in range(0, records, step):
        n = min(step, records - start)
        idx = np.arange(start, start + n)
        images = [f"img/{i % POOL:03d}.jpg" for i in idx]
        captions = [" ".join(words[rng.integers(0, len(words), 6)]) + f" {i}" for i in idx]
        table = pa.table({"image": images, "caption": captions})
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=100_000)
    assert writer is not None
    writer.close()
    return path


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """(sum, max) of the resident set sizes of ``proc`` and its children, in bytes."""
    sizes = []
    for p in [proc, *proc.children(recursive=True)]:
        try:
            sizes.append(p.memory_info().rss)
        except psutil.Error:
            pass
    return sum(sizes), max(sizes, default=0)


def truncate_done_shards(out: Path, seen: dict[str, int]) -> None:
    """Empty the shards of every chunk whose done marker is written (their bytes recorded in
    ``seen``): the disk then holds only the shards in flight. The ingest's work is unchanged."""
    for marker in (out / "ingest_state").glob("*.json"):
        if marker.name in seen or marker.name.startswith("part-"):
            continue
        try:
            state = json.loads(marker.read_text())
        except (OSError, ValueError):  # being renamed into place
            continue
        for shard in state["shards"]:
            os.truncate(out / shard, 0)
        seen[marker.name] = state["bytes"]


def run(table: Path, out: Path, workers: int, shard_samples: int, truncate: bool = False) -> dict:
    cmd = [sys.executable, "-m", "data_prep", "ingest", "--input", str(table), "--output", str(out),
           "--workers", str(workers), "--shard-samples", str(shard_samples), "--no-progress"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak_total = peak_max = 0
    truncated: dict[str, int] = {}
    polls = 0
    while proc.poll() is None:
        total, largest = tree_rss(ps)
        peak_total, peak_max = max(peak_total, total), max(peak_max, largest)
        polls += 1
        if truncate and polls % 20 == 0:
            truncate_done_shards(out, truncated)
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"ingest failed ({proc.returncode}): {stderr[-2000:]}")
    stats = json.loads((out / "stats.json").read_text())
    if truncate:  # the shards emptied while the ingest ran: their bytes from the markers
        stats["bytes"] = sum(json.loads(m.read_text())["bytes"] for m in (out / "ingest_state").glob("shard-*.json"))
    shutil.rmtree(out)  # a 2M-record output is ~24 GB: one run's output on disk at a time
    return {"workers": workers, "records": stats["input_records"], "samples_written": stats["samples_written"],
            "seconds": round(seconds, 1), "samples_per_s": round(stats["samples_written"] / seconds, 1),
            "peak_rss_total_mb": round(peak_total / 2**20, 1), "peak_rss_max_process_mb": round(peak_max / 2**20, 1),
            "shards": stats["shards"], "output_mb": round(stats["bytes"] / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shard-samples", type=int, default=10_000)
    parser.add_argument("--truncate-shards", action="store_true",
                        help="empty each shard once its chunk is done (for runs larger than the free disk: "
                             "2M records write ~24 GB); the ingest does the same work")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vlp-ingest-scale-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        table = make_table(root / "in", args.records)
        print(f"table: {args.records} records, {table.stat().st_size / 2**20:.1f} MB, {time.perf_counter() - t:.1f} s")
        results = []
        for workers in args.workers:
            result = run(table, root / f"out-{workers}", workers, args.shard_samples, args.truncate_shards)
            print(result)
            results.append(result)
    print(json.dumps({"benchmark": "ingest_scale", "records": args.records, "runs": results,
                      "peak_rss_under_1gb": all(r["peak_rss_total_mb"] < 1024 for r in results)}))


if __name__ == "__main__":
    main()
