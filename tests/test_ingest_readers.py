"""Each ingest reader on a tiny fixture: records, captions, metadata and reader-level errors."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import pytest

from data_prep.readers import ByteRange, detect_format, open_reader, read_image_bytes
from data_prep.readers.coco import CocoReader
from data_prep.readers.folder import FolderReader
from data_prep.readers.img2dataset import Img2DatasetReader
from data_prep.readers.jsonl import JsonlReader
from data_prep.readers.table import TableReader
from ingest_fixtures import image_bytes, write_image


def test_folder_reader_pairs_stems_and_flags_orphans(tmp_path: Path) -> None:
    write_image(tmp_path / "b.jpg", 1)
    (tmp_path / "b.txt").write_text("a red cube")
    write_image(tmp_path / "sub" / "a.png", 2, fmt="PNG")
    (tmp_path / "sub" / "a.txt").write_bytes(b"caf\xe9")  # latin-1, passed through as raw bytes
    write_image(tmp_path / "c.jpg", 3)  # no caption
    (tmp_path / "d.txt").write_text("no image")
    records = list(FolderReader(tmp_path))
    assert [(r.source_id, r.error) for r in records] == [
        ("b.jpg", None), ("c.jpg", "missing_caption"), ("d.txt", "missing_file"), ("sub/a.png", None)]
    assert records[0].captions == [b"a red cube"] and records[0].image == str(tmp_path / "b.jpg")
    assert records[3].captions == [b"caf\xe9"]
    assert read_image_bytes(records[0].image) == (tmp_path / "b.jpg").read_bytes()
    assert detect_format(tmp_path) == "folder"


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_table_reader_csv_tsv(tmp_path: Path, suffix: str) -> None:
    write_image(tmp_path / "imgs" / "x.jpg", 1)
    path = tmp_path / f"list{suffix}"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t" if suffix == ".tsv" else ",")
        writer.writerow(["filepath", "title", "other"])
        writer.writerow(["x.jpg", "a dog, running", "1"])
        writer.writerow(["gone.jpg", "lost", "2"])
    records = list(open_reader(path, image_column="filepath", caption_column="title",
                               image_root=tmp_path / "imgs"))
    assert [r.captions for r in records] == [["a dog, running"], ["lost"]]
    assert records[0].image == str(tmp_path / "imgs" / "x.jpg") and records[0].error is None
    assert records[1].error == "missing_file" and records[1].meta == {"row": 1}
    with pytest.raises(ValueError, match="no column"):
        list(TableReader(path, image_column="nope", caption_column="title"))


def test_table_reader_non_utf8_csv_reaches_validator(tmp_path: Path) -> None:
    write_image(tmp_path / "x.jpg", 1)
    (tmp_path / "t.csv").write_bytes(b"image,caption\nx.jpg,caf\xe9\n")
    (record,) = list(TableReader(tmp_path / "t.csv"))
    with pytest.raises(UnicodeEncodeError):
        record.captions[0].encode("utf-8")  # surrogate-escaped, so the validator can count it


def test_table_reader_parquet_paths_and_bytes(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    write_image(tmp_path / "x.jpg", 1)
    blob = image_bytes(2)
    table = pa.table({"img": [b"", blob], "cap": ["first", "second"]})
    pq.write_table(table, tmp_path / "bytes.parquet")
    pq.write_table(pa.table({"img": ["x.jpg"], "cap": ["by path"]}), tmp_path / "paths.parquet")
    records = list(open_reader(tmp_path / "bytes.parquet", image_column="img", caption_column="cap"))
    assert records[0].image == b"" and records[0].error is None  # counted as empty_file by ingest
    assert records[1].image == blob and records[1].source_id == "bytes.parquet:1"
    (by_path,) = list(open_reader(tmp_path / "paths.parquet", image_column="img", caption_column="cap"))
    assert by_path.image == str(tmp_path / "x.jpg") and by_path.captions == ["by path"]


def test_jsonl_reader_lists_and_bad_lines(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg", 1)
    lines = [json.dumps({"image": "a.jpg", "caption": ["one", "two"]}), "", "{not json",
             json.dumps({"image": "a.jpg", "caption": "single", "x": 1})]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    records = list(JsonlReader(tmp_path / "d.jsonl"))
    assert [(r.captions, r.error, r.meta["line"]) for r in records] == [
        (["one", "two"], None, 1), ([], "bad_row", 3), (["single"], None, 4)]
    assert detect_format(tmp_path / "d.jsonl") == "jsonl"


def test_coco_reader_groups_captions(tmp_path: Path) -> None:
    write_image(tmp_path / "img" / "1.jpg", 1)
    write_image(tmp_path / "img" / "2.jpg", 2)
    ann = {"images": [{"id": 7, "file_name": "2.jpg"}, {"id": 3, "file_name": "1.jpg"},
                      {"id": 9, "file_name": "missing.jpg"}, {"id": 4, "file_name": "1.jpg"}],
           "annotations": [{"image_id": 3, "caption": "c1"}, {"image_id": 7, "caption": "c2"},
                           {"image_id": 3, "caption": "c3"}, {"image_id": 9, "caption": "c4"}]}
    (tmp_path / "captions.json").write_text(json.dumps(ann))
    records = list(open_reader(tmp_path / "captions.json", image_root=tmp_path / "img"))
    assert [(r.source_id, r.captions, r.meta["coco_id"], r.error) for r in records] == [
        ("2.jpg", ["c2"], 7, None), ("1.jpg", ["c1", "c3"], 3, None),
        ("missing.jpg", ["c4"], 9, "missing_file"), ("1.jpg", [], 4, "missing_caption")]
    with pytest.raises(FileNotFoundError, match="image root"):
        CocoReader(tmp_path / "captions.json", tmp_path / "nope")


def write_img2dataset(root: Path, samples: list[tuple[str, bytes | None, str | None]]) -> Path:
    """An img2dataset-style webdataset folder: 00000.tar with key.jpg/.txt/.json + _stats.json."""
    import io

    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "00000.tar", "w") as tar:
        for key, jpg, txt in samples:
            parts = {"jpg": jpg, "txt": None if txt is None else txt.encode(),
                     "json": json.dumps({"url": f"http://x/{key}", "key": key, "status": "success"}).encode()}
            for ext, data in parts.items():
                if data is None:
                    continue
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (root / "00000_stats.json").write_text(json.dumps({"count": len(samples)}))
    return root


def test_img2dataset_reader_byte_ranges(tmp_path: Path) -> None:
    jpg0, jpg1 = image_bytes(1), image_bytes(2)
    root = write_img2dataset(tmp_path / "i2d", [("000000000", jpg0, "first"), ("000000001", jpg1, None),
                                                ("000000002", None, "text only")])
    assert detect_format(root) == "img2dataset"
    records = list(Img2DatasetReader(root))
    assert [(r.source_id, r.error) for r in records] == [
        ("00000.tar/000000000", None), ("00000.tar/000000001", "missing_caption"),
        ("00000.tar/000000002", "missing_file")]
    assert isinstance(records[0].image, ByteRange) and read_image_bytes(records[0].image) == jpg0
    assert read_image_bytes(records[1].image) == jpg1
    assert records[0].captions == [b"first"]
    assert records[0].meta == {"url": "http://x/000000000", "key": "000000000", "status": "success"}


def test_unknown_format_errors(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="--format"):
        detect_format(tmp_path / "x.bin")
    with pytest.raises(ValueError, match="unknown input format"):
        open_reader(tmp_path, "nope")


def _range_fixtures(root: Path) -> dict[str, Path]:
    """One small input per reader, each with a record the reader flags and (text formats) a
    quoted newline, blank lines and several row groups / tars."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    for i in range(7):
        write_image(root / "folder" / f"{i}.jpg", i)
        if i != 3:
            (root / "folder" / f"{i}.txt").write_text(f"caption {i}")
        write_image(root / "classes" / ("cat" if i < 3 else "dog") / f"{i}.jpg", i)
    with open(root / "t.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        for i in range(7):
            writer.writerow([f"folder/{i}.jpg", "two\nlines" if i == 2 else f"c{i}"])
    (root / "t.jsonl").write_text("\n".join(["", *(json.dumps({"image": f"folder/{i}.jpg", "caption": f"c{i}"})
                                                   for i in range(6)), "{bad", ""]))
    pq.write_table(pa.table({"image": [f"folder/{i}.jpg" for i in range(7)], "caption": [f"c{i}" for i in range(7)]}),
                   root / "t.parquet", row_group_size=3)
    ann = {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(6)],
           "annotations": [{"image_id": i, "caption": f"c{i}"} for i in range(5)]}
    (root / "coco.json").write_text(json.dumps(ann))
    write_img2dataset(root / "i2d", [(f"{i:09d}", image_bytes(i), f"c{i}") for i in range(3)])
    write_img2dataset(root / "tmp2", [(f"{i:09d}", image_bytes(i), f"c{i}") for i in range(3, 7)])
    (root / "tmp2" / "00000.tar").rename(root / "i2d" / "00001.tar")
    return {"folder": root / "folder", "imagefolder": root / "classes", "table": root / "t.csv",
            "jsonl": root / "t.jsonl", "parquet": root / "t.parquet", "coco": root / "coco.json", "img2dataset": root / "i2d"}


def test_every_reader_reads_its_ranges_as_its_whole_iteration(tmp_path: Path) -> None:
    """Chunks of any size, each read on its own (a fresh reader, as another process would),
    concatenate to the reader's whole iteration, in order."""
    fixtures = _range_fixtures(tmp_path)
    as_tuple = lambda r: (r.source_id, r.image, r.captions, r.meta, r.error)  # noqa: E731
    for name, path in fixtures.items():
        kwargs = {"image_root": path.parent / "folder"} if name == "coco" else {}
        whole = [as_tuple(r) for r in open_reader(path, **kwargs)]
        assert len(whole) >= 6, name
        for size in (1, 2, 3, 4, 100):
            ranges = open_reader(path, **kwargs).ranges(size)
            assert [(r.start, r.count) for r in ranges] == [(s, min(size, len(whole) - s))
                                                            for s in range(0, len(whole), size)], (name, size)
            pieces = [as_tuple(r) for rng in ranges for r in open_reader(path, **kwargs).read_range(rng)]
            assert pieces == whole, (name, size)
