"""Eval readers for Karpathy split JSON, and the dispatcher that picks a reader from a path."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import webdataset as wds

from eval.datasets.base import EvalDataset
from eval.datasets.csv_tables import CsvClassification, CsvRetrieval
from eval.datasets.image_folder import ImageFolderClassification
from eval.datasets.karpathy import KarpathyRetrieval
from eval.datasets.kinds import open_classification, open_retrieval
from eval.datasets.shards import ClassificationShards, RetrievalShards
from test_eval_formats import (BLUE, GREEN, RED, WHITE, assert_partitions_cover, corner, make_csv_images,
                               make_image_folder, save_corrupt, save_png, split_items)


# ---------------------------------------------------------------- Karpathy JSON


def make_karpathy(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "coco"
    save_png(root / "val2014" / "a.png", RED)
    save_png(root / "val2014" / "b.png", GREEN)
    save_png(root / "train2014" / "c.png", BLUE)
    save_png(root / "d.png", WHITE)
    save_corrupt(root / "val2014" / "bad.png")

    def entry(filename: str, split: str, raws: list[str], filepath: str | None = "val2014") -> dict[str, Any]:
        sentences = [{"raw": r, "tokens": r.lower().split(), "sentid": i} for i, r in enumerate(raws)]
        e: dict[str, Any] = {"filename": filename, "split": split, "imgid": 0, "sentids": [], "sentences": sentences}
        if filepath is not None:
            e["filepath"] = filepath
        return e

    images = [
        entry("a.png", "test", ["A red square. ", "a crimson tile"]),
        entry("b.png", "val", ["A green square."]),
        entry("missing.png", "test", ["gone"]),
        entry("c.png", "restval", ["A blue square."], filepath="train2014"),
        entry("d.png", "test", ["a white square", "blank"], filepath=None),  # Flickr style
        entry("bad.png", "test", ["corrupt"]),
        {"filepath": "val2014", "filename": "x.png", "split": "test", "sentences": []},
        {"filepath": "val2014", "filename": "y.png", "sentences": [{"raw": "no split"}]},
        entry("c.png", "train", ["A blue square again."], filepath="train2014"),
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"dataset": "coco", "images": images}))
    return path, root


def test_karpathy_test_split(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, root = make_karpathy(tmp_path)
    with caplog.at_level(logging.WARNING):
        ds = KarpathyRetrieval(path, root, transform=corner)
    assert "1 image entries without a 'split'" in caplog.text
    assert ds.name == "coco"
    records, skipped = split_items(list(ds))
    assert [(r.key, r.captions, r.image, r.index) for r in records] == [
        ("val2014/a.png", ["A red square. ", "a crimson tile"], RED, 0),  # raw, unstripped
        ("d.png", ["a white square", "blank"], WHITE, 2),
    ]
    assert [(s.key, s.index) for s in skipped] == [("val2014/missing.png", 1), ("val2014/bad.png", 3),
                                                   ("val2014/x.png", 4)]
    assert skipped[0].reason.startswith("FileNotFoundError")
    assert skipped[1].reason.startswith("UnidentifiedImageError")
    assert "no 'sentences'" in skipped[2].reason
    assert ds.content_files() == [path, root / "val2014" / "a.png", root / "d.png", root / "val2014" / "bad.png"]
    assert_partitions_cover(lambda: KarpathyRetrieval(path, root, transform=corner))


def test_karpathy_split_filtering(tmp_path: Path) -> None:
    path, root = make_karpathy(tmp_path)
    val = KarpathyRetrieval(path, root, transform=corner, split="val")
    assert [(r.key, r.captions, r.image) for r in val] == [("val2014/b.png", ["A green square."], GREEN)]
    train = KarpathyRetrieval(path, root, split=("train", "restval"))
    train.decode_images = False
    assert [(r.key, r.captions) for r in train] == [("train2014/c.png", ["A blue square."]),
                                                    ("train2014/c.png", ["A blue square again."])]
    with pytest.raises(ValueError, match="unknown Karpathy split"):
        KarpathyRetrieval(path, root, split="dev")
    only_test = tmp_path / "dataset_flickr30k.json"
    only_test.write_text(json.dumps({"images": [{"filename": "d.png", "split": "test", "sentences": [{"raw": "x"}]}]}))
    with pytest.raises(ValueError, match=r"no image in split train \(splits present: \['test'\]\)"):
        KarpathyRetrieval(only_test, root, split="train")
    assert KarpathyRetrieval(only_test, root).name == "flickr30k"


def test_karpathy_bad_files(tmp_path: Path) -> None:
    path, root = make_karpathy(tmp_path)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        KarpathyRetrieval(tmp_path / "absent.json", root)
    with pytest.raises(FileNotFoundError, match="missing image root"):
        KarpathyRetrieval(path, tmp_path / "no_images")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        KarpathyRetrieval(broken, root)
    broken.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="'images' list"):
        KarpathyRetrieval(broken, root)


# ---------------------------------------------------------------- dispatcher


def make_shards(root: Path, kind: str) -> Path:
    (root / "test").mkdir(parents=True)
    with wds.TarWriter(str(root / "test" / "0.tar")) as sink:
        buf = root / "tmp.png"
        save_png(buf, RED)
        field = {"cls": b"0"} if kind == "classification" else {"txt": b"a red square"}
        sink.write({"__key__": "s0", "png": buf.read_bytes(), **field})
        buf.unlink()
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("red\n")
    (root / "zeroshot_classification_templates.txt").write_text("a {c} thing\n")
    (root / "dataset_type.txt").write_text(kind + "\n")
    return root


def test_open_classification_picks_reader(tmp_path: Path) -> None:
    shards = make_shards(tmp_path / "wds_cls", "classification")
    ds = open_classification(shards, transform=corner)
    assert type(ds) is ClassificationShards and [(r.key, r.label, r.image) for r in ds] == [("s0", 0, RED)]
    folder = open_classification(make_image_folder(tmp_path / "pets"), transform=corner)
    assert type(folder) is ImageFolderClassification
    make_csv_images(tmp_path / "c")
    (tmp_path / "c" / "l.tsv").write_text("filepath\tlabel\nimgs/a.png\tred\n")
    csv_ds = open_classification(tmp_path / "c" / "l.tsv", transform=corner, delimiter="\t")
    assert type(csv_ds) is CsvClassification and [(r.key, r.label) for r in csv_ds] == [("imgs/a.png", 0)]
    assert isinstance(folder, EvalDataset)


def test_open_retrieval_picks_reader(tmp_path: Path) -> None:
    shards = make_shards(tmp_path / "wds_ret", "retrieval")
    ds = open_retrieval(shards)
    assert type(ds) is RetrievalShards and [(r.key, r.captions) for r in ds] == [("s0", ["a red square"])]
    make_csv_images(tmp_path)
    (tmp_path / "caps.csv").write_text("filepath,caption\nimgs/a.png,red\n")
    assert type(open_retrieval(tmp_path / "caps.csv")) is CsvRetrieval
    path, root = make_karpathy(tmp_path)
    karpathy = open_retrieval(path, transform=corner, image_root=root, split="val")
    assert type(karpathy) is KarpathyRetrieval and [r.key for r in karpathy] == ["val2014/b.png"]


def test_dispatcher_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing eval dataset"):
        open_classification(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="ImageFolder tree"):  # names the supported layouts
        open_classification(tmp_path / "empty")
    path, root = make_karpathy(tmp_path)
    with pytest.raises(ValueError, match="retrieval set"):
        open_classification(path)
    with pytest.raises(ValueError, match="needs image_root"):
        open_retrieval(path)
    with pytest.raises(ValueError, match="does not take option.*colour.*it takes: split"):
        open_retrieval(path, image_root=root, colour="red")
    pets = make_image_folder(tmp_path / "pets")
    with pytest.raises(ValueError, match="ImageFolder tree is a classification set.*Karpathy"):
        open_retrieval(pets)
    with pytest.raises(ValueError, match="CsvClassification does not take option.*caption_column"):
        open_classification(_touch(tmp_path / "x.csv"), caption_column="c")
    with pytest.raises(ValueError, match="unrecognised file type"):
        open_retrieval(_touch(tmp_path / "notes.txt"))


def _touch(path: Path) -> Path:
    path.write_text("filepath,label\n")
    return path
