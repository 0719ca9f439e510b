"""Tests for data_prep.shard_writer: shard rollover, sizes.json, determinism, atomicity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from data_prep import shard_writer as sw
from data_prep.shard_writer import FIXED_MTIME, ShardWriter, read_tar_members, write_text_atomic

REPO = Path(__file__).resolve().parents[1]


def _sample(i: int) -> dict:
    meta = {"i": i, "word": "é"}
    return {"__key__": f"k{i:04d}", "txt": f"caption {i}", "json": meta, "bin": bytes([i % 256]) * 7}


def _keys(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return sorted({m.name.split(".")[0] for m in tar.getmembers()})


def _temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_rollover_sizes_and_round_trip(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, "shard-%06d.tar", max_count=10) as writer:
        for i in range(25):
            writer.write(_sample(i))
    tars = sorted(p.name for p in tmp_path.glob("*.tar"))
    assert tars == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    sizes = json.loads((tmp_path / "sizes.json").read_text())
    assert sizes == {"shard-000000.tar": 10, "shard-000001.tar": 10, "shard-000002.tar": 5}
    assert writer.total == 25 and writer.shard_names == tars
    for name, count in sizes.items():
        assert len(_keys(tmp_path / name)) == count
    members = read_tar_members(tmp_path / "shard-000002.tar")
    assert members["k0024.txt"] == b"caption 24"
    assert json.loads(members["k0024.json"]) == {"i": 24, "word": "é"}
    assert members["k0024.bin"] == bytes([24]) * 7
    assert _temp_files(tmp_path) == []


def test_read_back_with_webdataset(tmp_path: Path) -> None:
    import webdataset as wds

    with ShardWriter(tmp_path, "%d.tar", max_count=4, sizes_name=None) as writer:
        writer.write_all(_sample(i) for i in range(6))
    assert not (tmp_path / "sizes.json").exists()
    ds = wds.WebDataset(str(tmp_path / "{0..1}.tar"), shardshuffle=False).decode()
    got = [(s["__key__"], s["txt"], s["json"]["i"]) for s in ds]
    assert got == [(f"k{i:04d}", f"caption {i}", i) for i in range(6)]


def test_identical_bytes_and_constant_mtime(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        with ShardWriter(tmp_path / sub, max_count=3) as writer:
            writer.write_all(_sample(i) for i in range(7))
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with tarfile.open(tmp_path / "a" / "shard-000000.tar") as tar:
        assert {m.mtime for m in tar.getmembers()} == {int(FIXED_MTIME)}


def test_exception_in_with_block_leaves_no_partial_final_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(tmp_path, "shard-%06d.tar", max_count=10) as writer:
            for i in range(15):
                writer.write(_sample(i))
            raise RuntimeError("boom")
    # The first shard was complete and stays; the half-written second one must not exist.
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["shard-000000.tar"]
    assert len(_keys(tmp_path / "shard-000000.tar")) == 10
    assert not (tmp_path / "sizes.json").exists()
    assert _temp_files(tmp_path) == []


def test_killed_process_leaves_only_complete_shards(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from data_prep.shard_writer import ShardWriter
        w = ShardWriter({str(tmp_path)!r}, "shard-%06d.tar", max_count=10)
        for i in range(25):
            w.write({{"__key__": "k%04d" % i, "txt": "x" * 1000}})
        os._exit(3)  # hard crash: no close, no cleanup, third shard half written
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    finals = sorted(p.name for p in tmp_path.glob("*.tar"))
    assert finals == ["shard-000000.tar", "shard-000001.tar"]
    for name in finals:
        assert len(_keys(tmp_path / name)) == 10
    leftovers = _temp_files(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".shard-000002.tar.")
    assert leftovers[0].endswith(".tmp")
    assert not (tmp_path / "sizes.json").exists()


def test_start_index_and_max_bytes(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, "part-%03d.tar", max_count=100, max_bytes=3000, start_index=5) as writer:
        writer.write_all({"__key__": f"k{i}", "txt": "y" * 1000} for i in range(7))
    assert writer.sizes == {"part-005.tar": 3, "part-006.tar": 3, "part-007.tar": 1}
    assert json.loads((tmp_path / "sizes.json").read_text()) == writer.sizes


def test_writer_rejects_bad_use(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_count"):
        ShardWriter(tmp_path, max_count=0)
    with pytest.raises(ValueError, match="pattern"):
        ShardWriter(tmp_path, pattern="shard.tar")
    writer = ShardWriter(tmp_path)
    with pytest.raises(ValueError, match="__key__"):
        writer.write({"txt": "no key"})
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(_sample(0))
    assert json.loads((tmp_path / "sizes.json").read_text()) == {}


def test_write_text_atomic_replaces_and_survives_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "sub" / "nshards.txt"
    write_text_atomic(target, "3\n")
    assert target.read_text() == "3\n"
    write_text_atomic(target, "héllo\n")
    assert target.read_bytes() == "héllo\n".encode("utf-8")
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(sw.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(target, "new content")
    assert target.read_text() == "héllo\n"
    assert _temp_files(target.parent) == []


def test_write_sizes_json_is_sorted(tmp_path: Path) -> None:
    path = sw.write_sizes_json(tmp_path, {"shard-000001.tar": 2, "shard-000000.tar": 5})
    assert list(json.loads(path.read_text())) == ["shard-000000.tar", "shard-000001.tar"]
    assert os.path.basename(path) == "sizes.json"
