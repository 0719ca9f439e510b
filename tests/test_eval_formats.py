"""Eval readers for ImageFolder trees and CSV/TSV files (Karpathy JSON and the dispatcher:
test_eval_formats_karpathy.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from eval.datasets.csv_tables import CsvClassification, CsvRetrieval
from eval.datasets.image_folder import DEFAULT_TEMPLATES, ImageFolderClassification
from eval.datasets.records import ClassificationRecord, RetrievalRecord, Skipped
from eval.encoding.batching import batches

RED, GREEN, BLUE, WHITE = (250, 10, 0), (5, 240, 20), (0, 30, 220), (255, 255, 255)


def save_png(path: Path, color: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), color).save(path, format="PNG")
    return path


def save_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"definitely not a png")
    return path


def corner(image: Image.Image) -> tuple[int, int, int]:
    """Test transform: the top-left pixel (checks that decoding + transform ran)."""
    return image.getpixel((0, 0))


def split_items(items: list[Any]) -> tuple[list[Any], list[Skipped]]:
    return [i for i in items if not isinstance(i, Skipped)], [i for i in items if isinstance(i, Skipped)]


def assert_partitions_cover(make: Any) -> None:
    """partition(0, 2) + partition(1, 2) give every index of the whole dataset exactly once."""
    whole = sorted(item.index for item in make())
    parts = [item.index for p in range(2) for item in make().partition(p, 2)]
    assert sorted(parts) == whole == list(range(len(whole)))
    assert {i % 2 for i in [item.index for item in make().partition(1, 2)]} <= {1}


# ---------------------------------------------------------------- ImageFolder


def make_image_folder(root: Path) -> Path:
    save_png(root / "cat" / "b.png", RED)
    save_png(root / "cat" / "A.PNG", GREEN)  # upper-case extension, sorts before "b.png"
    save_png(root / "dog_breed" / "c.png", BLUE)
    save_png(root / "dog_breed" / "sub" / "d.png", WHITE)  # nested, like torchvision
    save_corrupt(root / "dog_breed" / "broken.png")
    (root / "dog_breed" / "notes.txt").write_text("not an image")
    (root / "empty_class").mkdir()
    (root / "README.txt").write_text("a file at the top is not a class")
    return root


IMAGE_FOLDER_SAMPLES = [
    ("cat/A.PNG", 0), ("cat/b.png", 0),
    ("dog_breed/broken.png", 1), ("dog_breed/c.png", 1), ("dog_breed/sub/d.png", 1),
]


def test_image_folder_records_defaults_and_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_image_folder(tmp_path / "pets")
    with caplog.at_level(logging.WARNING):
        ds = ImageFolderClassification(root, transform=corner)
    assert "empty_class" in caplog.text
    assert ds.name == "pets"
    assert ds.classnames == ["cat", "dog breed", "empty class"]
    assert ds.templates == list(DEFAULT_TEMPLATES) == ["a photo of a {c}."]
    items = list(ds)
    assert [(i.key, i.index) for i in items] == [(k, n) for n, (k, _) in enumerate(IMAGE_FOLDER_SAMPLES)]
    records, skipped = split_items(items)
    assert [(r.key, r.label, r.image) for r in records] == [
        ("cat/A.PNG", 0, GREEN), ("cat/b.png", 0, RED), ("dog_breed/c.png", 1, BLUE), ("dog_breed/sub/d.png", 1, WHITE)
    ]
    assert all(isinstance(r, ClassificationRecord) for r in records)
    assert [(s.key, s.index) for s in skipped] == [("dog_breed/broken.png", 2)]
    assert "UnidentifiedImageError" in skipped[0].reason
    assert sorted(ds.content_files()) == sorted(root / k for k, _ in IMAGE_FOLDER_SAMPLES)
    assert_partitions_cover(lambda: ImageFolderClassification(root, transform=corner))


def test_image_folder_loader_workers_split_samples(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "pets")
    items = [i for batch in batches(ImageFolderClassification(root, corner), 2, num_workers=2) for i in batch]
    assert sorted((i.index, i.key) for i in items) == [(n, k) for n, (k, _) in enumerate(IMAGE_FOLDER_SAMPLES)]


def test_image_folder_matches_torchvision_order(tmp_path: Path) -> None:
    folder = pytest.importorskip("torchvision.datasets")
    root = make_image_folder(tmp_path / "pets")
    reference = folder.ImageFolder(str(root), allow_empty=True)
    ours = ImageFolderClassification(root)
    assert ours.folders == reference.classes
    assert ours.items == [(Path(p).relative_to(root).as_posix(), label) for p, label in reference.samples]


def test_image_folder_metadata_only_pass(tmp_path: Path) -> None:
    ds = ImageFolderClassification(make_image_folder(tmp_path / "pets"))
    ds.decode_images = False
    items = list(ds)
    assert [(i.key, i.label, i.image) for i in items] == [(k, label, None) for k, label in IMAGE_FOLDER_SAMPLES]


def test_image_folder_classnames_and_templates_files(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "pets")
    (root / "classnames.txt").write_text("house cat\nhound\n\nnothing\n")
    (root / "zeroshot_classification_templates.txt").write_text("a {c}.\n")
    ds = ImageFolderClassification(root)
    assert ds.classnames == ["house cat", "hound", "nothing"]
    assert ds.templates == ["a {c}."]
    assert root / "classnames.txt" in ds.content_files()
    (root / "templates.txt").write_text("itap of a {c}.\na photo of the {c}.\n")  # preferred name
    assert ImageFolderClassification(root).templates == ["itap of a {c}.", "a photo of the {c}."]
    custom = tmp_path / "t.txt"
    custom.write_text("art of a {c}.\n")
    assert ImageFolderClassification(root, templates_file=custom).templates == ["art of a {c}."]

    (root / "classnames.txt").write_text("only one\n")
    with pytest.raises(ValueError, match="1 class names but there are 3 class folders"):
        ImageFolderClassification(root)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        ImageFolderClassification(root, classnames_file=tmp_path / "nope.txt")
    (root / "classnames.txt").unlink()
    custom.write_text("a {x} photo\n")
    with pytest.raises(ValueError, match="only the placeholder"):
        ImageFolderClassification(root, templates_file=custom)


def test_image_folder_bad_roots(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing image folder"):
        ImageFolderClassification(tmp_path / "absent")
    (tmp_path / "flat").mkdir()
    save_png(tmp_path / "flat" / "x.png", RED)
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolderClassification(tmp_path / "flat")


# ---------------------------------------------------------------- CSV classification


def make_csv_images(folder: Path) -> None:
    save_png(folder / "imgs" / "a.png", RED)
    save_png(folder / "imgs" / "b.png", GREEN)
    save_png(folder / "imgs" / "c.png", BLUE)
    save_corrupt(folder / "imgs" / "corrupt.png")


def test_csv_classification(tmp_path: Path) -> None:
    make_csv_images(tmp_path)
    (tmp_path / "classnames.txt").write_text("cat\ndog\n")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "filepath,label,extra\n"
        "imgs/a.png,0,x\n"
        "imgs/b.png, dog ,y\n"   # class name (stripped)
        "imgs/missing.png,1,z\n"
        "imgs/c.png,7,z\n"       # index out of range
        "imgs/c.png,cow,z\n"     # unknown name
        "imgs/corrupt.png,1,z\n"
        ",0,z\n"                 # no image path
        "imgs/c.png,1\n"         # short row is fine
    )
    ds = CsvClassification(csv_path, transform=corner)
    assert ds.name == "labels"
    assert ds.classnames == ["cat", "dog"] and ds.templates == ["a photo of a {c}."]
    records, skipped = split_items(list(ds))
    assert [(r.key, r.label, r.image, r.index) for r in records] == [
        ("imgs/a.png", 0, RED, 0), ("imgs/b.png", 1, GREEN, 1), ("imgs/c.png", 1, BLUE, 7)
    ]
    reasons = {s.index: (s.key, s.reason) for s in skipped}
    assert sorted(reasons) == [2, 3, 4, 5, 6]
    assert reasons[2][0] == "imgs/missing.png" and reasons[2][1].startswith("FileNotFoundError")
    assert "class index 7 outside [0, 2)" in reasons[3][1]
    assert "'cow' is neither a class index nor a class name" in reasons[4][1]
    assert reasons[5][1].startswith("UnidentifiedImageError")
    assert reasons[6] == ("labels.csv:8", "ValueError: row 8: empty 'filepath'")
    images = [tmp_path / "imgs" / n for n in ("a.png", "b.png", "c.png", "corrupt.png")]
    assert ds.content_files() == [csv_path, *images, tmp_path / "classnames.txt"]
    assert_partitions_cover(lambda: CsvClassification(csv_path, transform=corner))


def test_tsv_classification_named_labels_and_image_root(tmp_path: Path) -> None:
    images = tmp_path / "elsewhere"
    make_csv_images(images)
    tsv = tmp_path / "meta" / "set.tsv"
    tsv.parent.mkdir()
    tsv.write_text("img\tcls\nimgs/b.png\tzebra\nimgs/a.png\tant\nimgs/c.png\tzebra\n")
    ds = CsvClassification(tsv, transform=corner, image_root=images, image_column="img", label_column="cls")
    assert ds.classnames == ["ant", "zebra"]  # inferred: sorted distinct names
    assert [(r.key, r.label, r.image) for r in ds] == [
        ("imgs/b.png", 1, GREEN), ("imgs/a.png", 0, RED), ("imgs/c.png", 1, BLUE)
    ]


def test_csv_classification_errors(tmp_path: Path) -> None:
    make_csv_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing.csv"):
        CsvClassification(tmp_path / "nothing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nimgs/a.png,0\n")
    with pytest.raises(ValueError, match="no column 'filepath'"):
        CsvClassification(bad)
    ints = tmp_path / "ints.csv"
    ints.write_text("filepath,label\nimgs/a.png,0\n")
    with pytest.raises(FileNotFoundError, match="classnames.txt"):
        CsvClassification(ints)  # integer labels and no class names
    with pytest.raises(FileNotFoundError, match="missing image root"):
        CsvClassification(ints, image_root=tmp_path / "nowhere", classnames_file=bad)


# ---------------------------------------------------------------- CSV retrieval


def test_csv_retrieval_groups_rows(tmp_path: Path) -> None:
    make_csv_images(tmp_path)
    csv_path = tmp_path / "captions.csv"
    csv_path.write_text(
        "filepath,caption\n"
        "imgs/b.png,second image first caption\n"
        "imgs/a.png,\"  a red square, small  \"\n"
        "imgs/b.png,second image again\n"
        "imgs/missing.png,nothing here\n"
        "imgs/a.png,red || crimson block\n"
        "imgs/c.png,   \n"               # no caption at all
        "imgs/corrupt.png,broken\n"
        ",orphan caption\n"
    )
    ds = CsvRetrieval(csv_path, transform=corner)
    items = list(ds)
    records, skipped = split_items(items)
    assert all(isinstance(r, RetrievalRecord) for r in records)
    assert [(r.key, r.captions, r.image, r.index) for r in records] == [
        ("imgs/b.png", ["second image first caption", "second image again"], GREEN, 0),
        ("imgs/a.png", ["a red square, small", "red || crimson block"], RED, 1),
    ]
    assert [(s.key, s.index) for s in skipped] == [
        ("imgs/missing.png", 2), ("imgs/c.png", 3), ("imgs/corrupt.png", 4), ("captions.csv:9", 5)
    ]
    assert skipped[0].reason.startswith("FileNotFoundError")
    assert "no caption" in skipped[1].reason
    assert "empty 'filepath'" in skipped[3].reason
    images = [tmp_path / "imgs" / n for n in ("b.png", "a.png", "c.png", "corrupt.png")]
    assert ds.content_files() == [csv_path, *images]  # distinct existing files, first-seen order
    assert_partitions_cover(lambda: CsvRetrieval(csv_path, transform=corner))

    split = CsvRetrieval(csv_path, caption_separator="||")
    split.decode_images = False
    by_key = {r.key: r.captions for r in split if not isinstance(r, Skipped)}
    assert by_key["imgs/a.png"] == ["a red square, small", "red", "crimson block"]


def test_csv_retrieval_custom_columns_tsv(tmp_path: Path) -> None:
    make_csv_images(tmp_path)
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("image\ttext\nimgs/c.png\tblue one|blue two\nimgs/a.png\tred\n")
    ds = CsvRetrieval(tsv, transform=corner, image_column="image", caption_column="text", caption_separator="|")
    assert [(r.key, r.captions, r.image) for r in ds] == [("imgs/c.png", ["blue one", "blue two"], BLUE),
                                                          ("imgs/a.png", ["red"], RED)]
    with pytest.raises(ValueError, match="no column 'caption'"):
        CsvRetrieval(tsv, image_column="image")
