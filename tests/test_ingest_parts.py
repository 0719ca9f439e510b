"""Ingest split across jobs and engines: N independent ``--part i/N`` jobs, then ``merge-stats``,
write exactly what one job writes (keys, shard bytes, stats), exact dedup across parts included;
a missing part is named; finalize twice changes nothing; Ray runs the same chunk tasks, and a
task whose worker dies is retried without duplicating a shard."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from data_prep.__main__ import main as prep_main
from data_prep.ingest import merge_stats, run_ingest
from data_prep.ingest_options import IngestOptions
from data_prep.shard_writer import read_tar_members
from ingest_fixtures import write_image, write_truncated_jpeg

TIMING = ("seconds", "shards_written", "shards_reused")


def _table(root: Path, rows: int = 26) -> Path:
    """A CSV of images with copies (records 3, 11 and 20 repeat earlier images, across chunks),
    a missing file, a truncated JPEG and an empty caption."""
    root.mkdir(parents=True)
    for i in range(rows):
        write_image(root / f"i{i}.jpg", i, (24 + i % 8, 20))
    write_truncated_jpeg(root / "cut.jpg")
    images = [f"i{i}.jpg" for i in range(rows)]
    images[3], images[11], images[20] = "i0.jpg", "i1.jpg", "i0.jpg"
    images[5], images[13] = "gone.jpg", "cut.jpg"
    with open(root / "pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        for i, image in enumerate(images):
            writer.writerow([image, "" if i == 17 else f"caption {i}"])
    return root / "pairs.csv"


def _opts(table: Path, out: Path, **kw) -> IngestOptions:
    return IngestOptions(inputs=[str(table)], output=str(out), shard_samples=4, dedup=True, **kw)


def _tree(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def _keys(out: Path) -> list[str]:
    return sorted({n.split(".")[0] for p in out.glob("*.tar") for n in read_tar_members(p)})


def _stats(out: Path) -> dict:
    return {k: v for k, v in json.loads((out / "stats.json").read_text()).items() if k not in TIMING}


def test_three_parts_then_merge_equal_one_job(tmp_path: Path) -> None:
    table = _table(tmp_path / "in")
    one = run_ingest(_opts(table, tmp_path / "one"), progress=False)
    assert one["skipped"] == {"caption_empty": 1, "duplicate": 3, "missing_file": 1, "truncated_image": 1}
    assert one["input_records"] == 26 and one["samples_written"] == 20 and one["chunks"] == 7
    # the first copy in key order is kept: records 3, 11 and 20 repeat records 0, 1 and 0
    assert _keys(tmp_path / "one") == [f"{i:09d}" for i in range(26) if i not in (3, 5, 11, 13, 17, 20)]
    parts = tmp_path / "parts"
    for i in (2, 0, 1):  # any order, as independent jobs finish
        summary = run_ingest(_opts(table, parts), progress=False, part=(i, 3))
        assert summary["chunks"] == len(range(i, 7, 3))
    assert not (parts / "stats.json").exists() and not (parts / "sizes.json").exists()
    assert prep_main(["merge-stats", "--output", str(parts)]) == 0
    assert _tree(parts) == _tree(tmp_path / "one")
    assert _stats(parts) == _stats(tmp_path / "one")
    assert (parts / "sizes.json").read_bytes() == (tmp_path / "one" / "sizes.json").read_bytes()


def test_merge_names_the_missing_part_and_finalize_twice_changes_nothing(tmp_path: Path, capsys) -> None:
    table = _table(tmp_path / "in")
    out = tmp_path / "parts"
    run_ingest(_opts(table, out), progress=False, part=(0, 2))
    assert prep_main(["merge-stats", "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "3 of 7 chunks" in err and "shard-000001.tar" in err and "shard-000005.tar" in err
    assert "parts not finished: 1/2" in err
    run_ingest(_opts(table, out), progress=False, part=(1, 2))
    first = merge_stats(out)
    tree = _tree(out)
    again = merge_stats(out)
    assert _tree(out) == tree and {k: v for k, v in again.items() if k not in TIMING} == \
        {k: v for k, v in first.items() if k not in TIMING}


def test_a_part_with_other_options_is_refused(tmp_path: Path, capsys) -> None:
    table = _table(tmp_path / "in")
    run_ingest(_opts(table, tmp_path / "out"), progress=False, part=(0, 2))
    from data_prep.ingest import IngestError

    with pytest.raises(IngestError, match="quality"):
        run_ingest(_opts(table, tmp_path / "out", quality=80), progress=False, part=(1, 2))
    assert prep_main(["ingest", "--input", str(table), "--output", str(tmp_path / "x"), "--part", "2/2"]) == 2
    assert "--part must be i/N with 0 <= i < N" in capsys.readouterr().err


def test_an_interrupted_dedup_rewrite_is_redone(tmp_path: Path) -> None:
    table = _table(tmp_path / "in")
    out = tmp_path / "out"
    run_ingest(_opts(table, out), progress=False)
    clean = _tree(out)
    # as if killed before the rewrites: shards with their copies back, a stale temporary beside one
    for part in (0, 1):
        run_ingest(_opts(table, tmp_path / "raw"), progress=False, part=(part, 2))
    for name, data in _tree(tmp_path / "raw").items():
        (out / name).write_bytes(data)
    (out / ".shard-000002.tar.abcd.tmp").write_bytes(b"partial")
    merge_stats(out)
    assert _tree(out) == clean


def test_engine_contract_any_order_any_repeat(tmp_path: Path) -> None:
    """What an engine does: list the tasks once, ship them (pickled), run each anywhere, in any
    order, some twice, then finalize: the same output as one job."""
    import pickle

    from data_prep.ingest import finalize, list_chunk_tasks, run_chunk_task

    table = _table(tmp_path / "in")
    one = run_ingest(_opts(table, tmp_path / "one"), progress=False)
    opts = _opts(table, tmp_path / "engine")
    tasks = list_chunk_tasks(opts)
    assert [t.name for t in tasks] == [f"shard-{i:06d}.tar" for i in range(7)]
    assert [t.first_key for t in tasks] == [0, 4, 8, 12, 16, 20, 24] and len(pickle.dumps(tasks[0])) < 400
    shipped = pickle.loads(pickle.dumps((tasks, opts)))
    states = [run_chunk_task(t, shipped[1]) for t in reversed(shipped[0])]
    assert run_chunk_task(shipped[0][2], shipped[1]) == states[-3]  # a task run again: same marker
    assert sum(s["written"] for s in states) == 23 and states[-2]["skipped"] == {"missing_file": 1}
    stats = finalize(opts)
    assert _tree(tmp_path / "engine") == _tree(tmp_path / "one")
    assert {k: v for k, v in stats.items() if k not in TIMING} == {k: v for k, v in one.items() if k not in TIMING}


def test_resume_after_a_killed_chunk_rewrites_only_that_shard(tmp_path: Path) -> None:
    table = _table(tmp_path / "in")
    out = tmp_path / "out"
    run_ingest(_opts(table, out), progress=False)
    clean = _tree(out)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tar")}
    # chunk 2 killed mid-write: no shard, no marker, a partial temporary left behind
    (out / "shard-000002.tar").unlink()
    (out / "ingest_state" / "shard-000002.tar.json").unlink()
    (out / ".shard-000002.tar.k1ll.tmp").write_bytes(b"partial")
    resumed = run_ingest(_opts(table, out), progress=False)
    assert resumed["shards_written"] == 1 and resumed["shards_reused"] == 6
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tar")}
    assert [n for n in after if after[n] != before[n]] == ["shard-000002.tar"]
    assert _tree(out) == clean and not list(out.glob(".*.tmp"))
    assert resumed["skipped"]["duplicate"] == 3  # record 11 (a copy of 1) dropped again


def test_a_deduplicated_shard_is_the_shard_of_its_kept_samples(tmp_path: Path) -> None:
    """finalize's rewrite copies the kept members as they were: the same bytes as ShardWriter
    writing only the kept samples."""
    import io

    from data_prep.shard_writer import FIXED_MTIME, SampleTarWriter

    out = tmp_path / "out"
    run_ingest(_opts(_table(tmp_path / "in"), out), progress=False)
    shard = out / "shard-000005.tar"  # records 20..23, 20 a copy of record 0
    members = read_tar_members(shard)
    assert sorted({n.split(".")[0] for n in members}) == ["000000021", "000000022", "000000023"]
    buffer = io.BytesIO()
    writer = SampleTarWriter(buffer, mtime=FIXED_MTIME)
    for key in sorted({n.split(".")[0] for n in members}):
        writer.write({"__key__": key, **{n.split(".", 1)[1]: v for n, v in members.items() if n.startswith(key)}})
    writer.close()
    assert shard.read_bytes() == buffer.getvalue()


def test_a_shard_that_dedup_empties_stays_listed_with_zero(tmp_path: Path) -> None:
    root = tmp_path / "in"
    write_image(root / "a.jpg", 1)
    (root / "t.csv").write_text("image,caption\n" + "".join(f"a.jpg,c{i}\n" for i in range(4)))
    stats = run_ingest(IngestOptions(inputs=[str(root / "t.csv")], output=str(tmp_path / "out"), shard_samples=2,
                                     dedup=True), progress=False)
    assert stats["samples_written"] == 1 and stats["skipped"] == {"duplicate": 3}
    assert json.loads((tmp_path / "out" / "sizes.json").read_text()) == {"shard-000000.tar": 1, "shard-000001.tar": 0}
    assert read_tar_members(tmp_path / "out" / "shard-000001.tar") == {}


def test_an_input_changed_between_parts_is_refused_by_name(tmp_path: Path) -> None:
    from data_prep.ingest import IngestError

    table = _table(tmp_path / "in")
    run_ingest(_opts(table, tmp_path / "out"), progress=False, part=(0, 2))
    with open(table, "a") as handle:
        handle.write("i2.jpg,one more\n")
    with pytest.raises(IngestError, match=r"pairs.csv changed since \(records 26 -> 27, bytes"):
        run_ingest(_opts(table, tmp_path / "out"), progress=False, part=(1, 2))
    with pytest.raises(IngestError, match="pairs.csv changed since"):
        merge_stats(tmp_path / "out")


def _dies_once(task, opts, marker: Path) -> dict:
    """A chunk task whose first attempt leaves a partial temporary file and kills its worker."""
    import os

    from data_prep.ingest_chunks import run_chunk_task

    if not marker.exists():
        marker.write_text(task.name)
        (Path(opts.output) / f".{task.name}.dead.tmp").write_bytes(b"partial")
        os._exit(1)
    return run_chunk_task(task, opts)


def test_ray_runs_the_same_chunks_and_retries_a_dead_worker(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from functools import partial
    import sys

    from data_prep.engines import run_tasks
    from data_prep.ingest_chunks import list_chunk_tasks
    from data_prep.ingest_finalize import finalize

    table = _table(tmp_path / "in")
    local = run_ingest(_opts(table, tmp_path / "local"), progress=False)
    by_ray = run_ingest(_opts(table, tmp_path / "ray", workers=2), progress=False, engine="ray")
    assert _tree(tmp_path / "ray") == _tree(tmp_path / "local")
    assert {k: v for k, v in by_ray.items() if k not in TIMING} == {k: v for k, v in local.items() if k not in TIMING}

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    out = tmp_path / "killed"
    out.mkdir()
    opts = _opts(table, out, workers=2)
    tasks = list_chunk_tasks(opts)
    marker = tmp_path / "died-once"
    states = list(run_tasks("ray", partial(_dies_once, marker=marker), tasks, opts, workers=2))
    assert marker.is_file() and len(states) == len(tasks)  # the dead worker's task ran again
    stats = finalize(opts)
    assert _tree(out) == _tree(tmp_path / "local") and stats["samples_written"] == local["samples_written"]
    assert not list(out.glob(".*.tmp"))  # the retry swept the dead attempt's temporary file
