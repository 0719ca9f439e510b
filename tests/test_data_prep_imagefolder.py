"""``vlp-prep ingest`` on a class-per-folder image tree, format detection, and the 0-sample exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.__main__ import main as prep_main
from data_prep.ingest import IngestError, run_ingest
from data_prep.ingest_options import IngestOptions
from data_prep.readers import detect_format, open_reader
from data_prep.shard_writer import read_tar_members
from ingest_fixtures import write_image


def _class_tree(root: Path) -> Path:
    """root/dog/*.png (2), root/cat/*.jpg (2), root/golden_retriever/deep/x.jpg, an empty folder."""
    write_image(root / "dog" / "b.png", 1, fmt="PNG")
    write_image(root / "dog" / "a.png", 2, fmt="PNG")
    write_image(root / "cat" / "2.jpg", 3)
    write_image(root / "cat" / "1.jpg", 4)
    write_image(root / "golden_retriever" / "deep" / "x.jpg", 5)
    (root / "empty").mkdir()
    return root


def _samples(out: Path) -> list[dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for path in sorted(out.glob("*.tar")):
        for name, data in read_tar_members(path).items():
            key, _, ext = name.partition(".")
            samples.setdefault(key, {})[ext] = data
    return [samples[k] for k in sorted(samples)]


def test_class_tree_ingests_with_template_captions_and_labels(tmp_path: Path, capsys) -> None:
    root = _class_tree(tmp_path / "in")
    assert detect_format(root) == "imagefolder"
    out = tmp_path / "out"
    assert prep_main(["ingest", "--input", str(root), "--output", str(out), "--no-progress"]) == 0
    assert (out / "classnames.txt").read_text() == "cat\ndog\ngolden_retriever\n"
    samples = _samples(out)
    got = [(json.loads(s["json"])["source_id"], s["txt"], s["cls"], json.loads(s["json"])["classname"])
           for s in samples]
    assert got == [
        ("cat/1.jpg", b"a photo of a cat.", b"0", "cat"), ("cat/2.jpg", b"a photo of a cat.", b"0", "cat"),
        ("dog/a.png", b"a photo of a dog.", b"1", "dog"), ("dog/b.png", b"a photo of a dog.", b"1", "dog"),
        ("golden_retriever/deep/x.jpg", b"a photo of a golden retriever.", b"2", "golden_retriever")]
    assert all(json.loads(s["json"])["label"] == int(s["cls"]) for s in samples)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["inputs"] == [{"path": str(root), "format": "imagefolder"}] and stats["classes"] == 3
    assert "read as imagefolder" in capsys.readouterr().out

    # --caption-template changes the captions, and is part of the options a rerun must match
    out2 = tmp_path / "out2"
    assert prep_main(["ingest", "--input", str(root), "--output", str(out2), "--no-progress",
                      "--caption-template", "itap of a {}"]) == 0
    captions = [s["txt"] for s in _samples(out2)]
    assert captions[::2] == [b"itap of a cat", b"itap of a dog", b"itap of a golden retriever"]
    assert prep_main(["ingest", "--input", str(root), "--output", str(out2), "--no-progress"]) == 1
    assert "caption_template" in capsys.readouterr().err


def test_labels_match_torchvision_image_folder(tmp_path: Path) -> None:
    datasets = pytest.importorskip("torchvision.datasets")
    root = _class_tree(tmp_path / "in")
    (root / "empty").rmdir()  # torchvision refuses a class folder without images
    reference = datasets.ImageFolder(str(root))
    records = list(open_reader(root))
    assert open_reader(root).classnames == reference.classes
    assert [(r.image, r.meta["label"]) for r in records] == [(p, c) for p, c in reference.samples]


def test_caption_folders_still_read_as_folder(tmp_path: Path) -> None:
    """A tree with even one .txt caption keeps the image + caption reader; so does a flat folder."""
    write_image(tmp_path / "a" / "cat" / "1.jpg", 1)
    (tmp_path / "a" / "cat" / "1.txt").write_text("a cat on a mat")
    write_image(tmp_path / "a" / "dog" / "2.jpg", 2)
    assert detect_format(tmp_path / "a") == "folder"
    write_image(tmp_path / "b" / "top.jpg", 3)
    write_image(tmp_path / "b" / "cat" / "1.jpg", 4)
    assert detect_format(tmp_path / "b") == "folder"
    stats = run_ingest(IngestOptions(inputs=[str(tmp_path / "a")], output=str(tmp_path / "out")), progress=False)
    assert stats["samples_written"] == 1 and stats["skipped"] == {"missing_caption": 1}
    assert not (tmp_path / "out" / "classnames.txt").exists()
    (sample,) = _samples(tmp_path / "out")
    assert sample["txt"] == b"a cat on a mat" and "cls" not in sample


def test_ingest_of_nothing_exits_nonzero_saying_what_was_expected(tmp_path: Path, capsys) -> None:
    flat = tmp_path / "flat"
    write_image(flat / "a.jpg", 1)
    write_image(flat / "b.jpg", 2)
    code = prep_main(["ingest", "--input", str(flat), "--output", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "wrote 0 samples from 2 input records (skipped: missing_caption=2)" in err
    assert f"{flat}: read as folder; folder expects a directory of images with same-stem .txt captions" in err
    assert "found a directory with 2 images at the top level and 0 in 0 sub-folders, 0 .txt files" in err
    assert "imagefolder" in err  # how to get the other layout
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["samples_written"] == 0

    from data_prep.ingest import EmptyIngestError

    csv = tmp_path / "list.csv"
    csv.write_text("image,caption\na.jpg,a cat\n")
    with pytest.raises(EmptyIngestError, match="read as jsonl; jsonl expects a .jsonl file") as caught:
        run_ingest(IngestOptions(inputs=[str(csv)], output=str(tmp_path / "o2"), format="jsonl"), progress=False)
    assert "(detected format: table); try --format table" in str(caught.value)
    assert caught.value.stats["skipped"] == {"bad_row": 2}


def test_class_inputs_with_different_classes_are_refused(tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "cat" / "1.jpg", 1)
    write_image(tmp_path / "b" / "dog" / "1.jpg", 2)
    opts = IngestOptions(inputs=[str(tmp_path / "a"), str(tmp_path / "b")], output=str(tmp_path / "out"))
    with pytest.raises(IngestError, match=r"different classes \(\['cat'\] vs \['dog'\]\)"):
        run_ingest(opts, progress=False)
    with pytest.raises(ValueError, match="--caption-template must hold one '{}'"):
        run_ingest(IngestOptions(inputs=[str(tmp_path / "a")], output=str(tmp_path / "o"), caption_template="x"))


@pytest.mark.parametrize("mapping_kind", ["synset_mapping", "json_index"])
def test_imagenet_style_tree_is_captioned_from_its_class_names(tmp_path: Path, mapping_kind: str) -> None:
    """train/<wnid>/*.JPEG with LOC_synset_mapping.txt (or Keras' class index JSON): captions and
    classnames.txt use the names, labels the sorted wnid order, the wnid stays in the meta."""
    write_image(tmp_path / "train" / "n02084071" / "n02084071_1.JPEG", 1)
    write_image(tmp_path / "train" / "n01440764" / "n01440764_7.JPEG", 2)
    write_image(tmp_path / "train" / "n01440764" / "n01440764_3.JPEG", 3)
    if mapping_kind == "synset_mapping":
        names = tmp_path / "LOC_synset_mapping.txt"
        names.write_text("n01440764 tench, Tinca tinca\nn02084071 dog, domestic dog, Canis familiaris\n")
    else:
        names = tmp_path / "imagenet_class_index.json"
        names.write_text(json.dumps({"0": ["n01440764", "tench"], "1": ["n02084071", "dog"]}))
    out = tmp_path / "out"
    assert prep_main(["ingest", "--input", str(tmp_path / "train"), "--output", str(out), "--class-names", str(names),
                      "--caption-template", "a photo of a {}, a type of animal.", "--no-progress"]) == 0
    assert (out / "classnames.txt").read_text() == "tench\ndog\n"
    samples = _samples(out)
    assert [s["txt"] for s in samples] == [b"a photo of a tench, a type of animal."] * 2 + \
        [b"a photo of a dog, a type of animal."]
    assert [s["cls"] for s in samples] == [b"0", b"0", b"1"]
    meta = json.loads(samples[0]["json"])
    assert (meta["classname"], meta["folder"], meta["source_id"]) == ("tench", "n01440764", "n01440764/n01440764_3.JPEG")


def test_a_class_folder_without_a_name_is_refused(tmp_path: Path, capsys) -> None:
    write_image(tmp_path / "train" / "n01440764" / "a.JPEG", 1)
    write_image(tmp_path / "train" / "n09999999" / "b.JPEG", 2)
    (tmp_path / "names.txt").write_text("n01440764\ttench\n")
    assert prep_main(["ingest", "--input", str(tmp_path / "train"), "--output", str(tmp_path / "out"),
                      "--class-names", str(tmp_path / "names.txt"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no name for the class folder(s) ['n09999999']" in err
