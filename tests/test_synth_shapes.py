"""Tests for the synth-shapes generator: determinism, layout, captions, eval sets, CLI."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.__main__ import main
from data_prep.shapes_captions import (
    CLASSNAMES,
    COLOURS,
    SHAPES,
    Obj,
    Scene,
    compositional_item,
    max_radius,
    render,
    scene_spec,
    signature,
)
from data_prep.synth_shapes import SynthShapesConfig, generate, render_scene

REPO = Path(__file__).resolve().parents[1]
ARGS = dict(
    train_samples=37, seed=3, image_size=48, shard_size=10,
    zeroshot_per_class=3, retrieval_samples=9, compositional_samples=12,
)


def _make(out: Path, workers: int = 1, **over: int) -> Path:
    generate(SynthShapesConfig(out=str(out), **{**ARGS, **over}), workers=workers, progress=False)
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make(tmp_path_factory.mktemp("shapes") / "set")


def _samples(path: Path) -> dict[str, dict[str, bytes]]:
    """{key: {extension: bytes}} of one tar, in file order."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            f = tar.extractfile(m)
            assert f is not None, f"{m.name} is not a regular file"
            out.setdefault(key, {})[ext] = f.read()
    return out


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _split_samples(root: Path) -> list[dict[str, bytes]]:
    n = int((root / "test" / "nshards.txt").read_text())
    return [s for i in range(n) for s in _samples(root / "test" / f"{i}.tar").values()]


def test_same_seed_identical_bytes_different_seed_differs(dataset: Path, tmp_path: Path) -> None:
    again = _all_files(_make(tmp_path / "again", workers=2))
    first = _all_files(dataset)
    assert sorted(first) == sorted(again)
    assert [n for n in first if first[n] != again[n]] == []
    other = _all_files(_make(tmp_path / "other", seed=4))
    assert sorted(other) == sorted(first)
    shards = [n for n in first if n.endswith(".tar")]
    assert len(shards) == 4 + 5 + 1 + 2
    assert all(other[n] != first[n] for n in shards)


def test_sizes_json_matches_shards(dataset: Path) -> None:
    sizes = json.loads((dataset / "train" / "sizes.json").read_text())
    assert sizes == {f"shard-{i:06d}.tar": n for i, n in enumerate([10, 10, 10, 7])}
    assert sorted(p.name for p in (dataset / "train").glob("*.tar")) == sorted(sizes)
    for name, count in sizes.items():
        assert len(_samples(dataset / "train" / name)) == count
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["counts"]["train"] == 37 and meta["counts"]["train_shards"] == 4
    assert meta["args"]["seed"] == 3 and "out" not in meta["args"]
    assert meta["classnames"] == list(CLASSNAMES)


def test_round_trip_with_webdataset(dataset: Path) -> None:
    import webdataset as wds

    urls = str(dataset / "train" / "shard-{000000..000003}.tar")
    ds = wds.WebDataset(urls, shardshuffle=False).decode("pil")
    keys, n_single = [], 0
    for s in ds:
        keys.append(s["__key__"])
        meta = s["json"]
        assert s["txt"] == meta["caption"] and s["txt"].strip() == s["txt"]
        assert s["jpg"].size == (48, 48) and s["jpg"].mode == "RGB"
        assert len(meta["objects"]) in (1, 2)
        assert (meta["relation"] is None) == (len(meta["objects"]) == 1)
        n_single += len(meta["objects"]) == 1
        for o in meta["objects"]:
            assert o["colour"] in s["txt"] and o["shape"] in s["txt"]
            assert set(o) == {"shape", "colour", "size", "x", "y"}
    assert keys == ["%09d" % i for i in range(37)]
    assert 8 <= n_single <= 29  # about half one-object


def _relation_holds(a: dict, rel: str, b: dict) -> bool:
    return {
        "left of": a["x"] < b["x"],
        "right of": a["x"] > b["x"],
        "above": a["y"] < b["y"],
        "below": a["y"] > b["y"],
    }[rel]


def test_pairs_have_true_relation_and_do_not_overlap(tmp_path: Path) -> None:
    out = _make(tmp_path / "big", train_samples=300, shard_size=300)
    pairs = 0
    for s in _samples(out / "train" / "shard-000000.tar").values():
        meta = json.loads(s["json"])
        if meta["relation"] is None:
            continue
        pairs += 1
        a, b = meta["objects"]
        assert _relation_holds(a, meta["relation"], b)
        ra, rb = max_radius(a["size"]), max_radius(b["size"])
        # bounding boxes are disjoint along at least one axis
        assert abs(a["x"] - b["x"]) >= ra + rb or abs(a["y"] - b["y"]) >= ra + rb
        assert (a["colour"], a["shape"]) != (b["colour"], b["shape"])
    assert 100 < pairs < 200


def test_render_draws_the_right_colour_where_the_object_is() -> None:
    scene = Scene(objects=(Obj("circle", "red", "large", 0.5, 0.5),))
    arr = np.asarray(render_scene(scene, 64, np.random.default_rng(0)), dtype=int)
    r, g, b = arr[32, 32]
    assert r > 180 and g < 80 and b < 80
    assert arr[2, 2].min() > 200  # light background in the corner
    blue = Scene(objects=(Obj("square", "blue", "small", 0.2, 0.8),))
    arr = np.asarray(render_scene(blue, 100, np.random.default_rng(0)), dtype=int)
    assert arr[80, 20, 2] > 180 and arr[80, 20, 0] < 80  # row = y, column = x
    assert arr[20, 80].min() > 200


def test_zeroshot_layout(dataset: Path) -> None:
    root = dataset / "eval" / "zeroshot"
    assert (root / "classnames.txt").read_text().splitlines() == [f"{c} {s}" for c in COLOURS for s in SHAPES]
    assert len(CLASSNAMES) == 16 and CLASSNAMES[1] == "red square"
    templates = (root / "zeroshot_classification_templates.txt").read_text().splitlines()
    assert len(templates) >= 6 and all("{c}" in t for t in templates)
    assert "a photo of a {c}." in templates
    assert (root / "dataset_type.txt").read_text().strip() == "classification"
    assert int((root / "test" / "nshards.txt").read_text()) == 5 == len(list((root / "test").glob("*.tar")))
    samples = _split_samples(root)
    labels = [int(s["cls"]) for s in samples]
    assert all(0 <= c < 16 for c in labels)
    assert Counter(labels) == {c: 3 for c in range(16)}
    for s in samples:
        assert set(s) == {"jpg", "cls"}
        assert Image.open(io.BytesIO(s["jpg"])).size == (48, 48)


def test_zeroshot_reads_like_clip_benchmark(dataset: Path) -> None:
    import webdataset as wds

    root = dataset / "eval" / "zeroshot"
    n = int((root / "test" / "nshards.txt").read_text())
    ds = (
        wds.WebDataset(str(root / "test" / ("{0..%d}.tar" % (n - 1))), shardshuffle=False)
        .decode(wds.autodecode.ImageHandler("pil", extensions=["webp", "png", "jpg", "jpeg"]))
        .to_tuple(["webp", "png", "jpg", "jpeg"], "cls")
    )
    items = list(ds)
    assert len(items) == 48
    img, label = items[0]
    assert img.size == (48, 48) and isinstance(label, int)
    # the image shows the labelled colour: its most saturated pixels match the class colour
    arr = np.asarray(img, dtype=int)
    sat = arr.max(-1) - arr.min(-1)
    mean = arr[sat > 120].mean(0)
    colour = CLASSNAMES[label].split()[0]
    expect = {"red": 0, "green": 1, "blue": 2}
    if colour in expect:
        assert int(np.argmax(mean)) == expect[colour]
    else:  # yellow: red and green high, blue low
        assert mean[0] > 150 and mean[1] > 150 and mean[2] < 100


def test_retrieval_layout(dataset: Path) -> None:
    root = dataset / "eval" / "retrieval"
    assert (root / "dataset_type.txt").read_text().strip() == "retrieval"
    assert int((root / "test" / "nshards.txt").read_text()) == 1
    samples = _split_samples(root)
    assert len(samples) == 9
    pairs = 0
    for s in samples:
        assert set(s) == {"jpg", "txt"}
        caps = s["txt"].decode("utf-8").splitlines()
        assert 2 <= len(caps) <= 3 and all(caps)
        assert len({c.rstrip(".") for c in caps}) == len(caps)
        pairs += any(r in caps[0] for r in (" left of ", " right of ", " above ", " below "))
    assert pairs == 4  # odd indices are two-object images


def test_compositional_set(dataset: Path) -> None:
    root = dataset / "eval" / "compositional"
    assert int((root / "test" / "nshards.txt").read_text()) == 2
    samples = _split_samples(root)
    assert len(samples) == 12
    for s in samples:
        assert set(s) == {"jpg", "json"}
        item = json.loads(s["json"])
        cap, negs = item["caption"], item["negatives"]
        assert item["negative_types"] == ["swap_attribute", "swap_relation", "shuffle_words"]
        assert len(negs) == 3 and all(n != cap for n in negs)
        assert sorted(negs[0].split()) == sorted(cap.split())  # an exchange, same words
        assert sorted(negs[2].split()) == sorted(cap.split())
        assert any(r in cap for r in (" left of ", " right of ", " above ", " below "))
        a, rel, b = _split_pair(cap)
        na, nrel, nb = _split_pair(negs[1])
        assert (na, nrel, nb) == (b, rel, a)


def _split_pair(caption: str) -> tuple[str, str, str]:
    for rel in ("left of", "right of", "above", "below"):
        if f" {rel} " in caption:
            a, b = caption.split(f" {rel} ")
            return a, rel, b
    raise AssertionError(caption)


def test_negatives_describe_other_scenes() -> None:
    a = Obj("circle", "red", "small", 0.25, 0.5)
    b = Obj("square", "blue", "large", 0.75, 0.5)
    scene = Scene(objects=(a, b), relation="left of")
    assert render(scene_spec(scene, with_size=True)) == "a small red circle left of a large blue square"
    assert render(scene_spec(scene, inverse=True)) == "a blue square right of a red circle"
    # the inverse phrasing describes the same scene; a swap does not
    assert signature(scene_spec(scene)) == signature(scene_spec(scene, inverse=True))
    expected = {  # caption -> (allowed swap_attribute negatives, swap_relation negative)
        "a red circle left of a blue square": (
            {"a blue circle left of a red square"}, "a blue square left of a red circle"),
        "a small red circle left of a large blue square": (
            {"a small blue circle left of a large red square",
             "a large red circle left of a small blue square"},
            "a large blue square left of a small red circle"),
        "a blue square right of a red circle": (
            {"a red square right of a blue circle"}, "a red circle right of a blue square"),
        "a large blue square right of a small red circle": (
            {"a large red square right of a small blue circle",
             "a small blue square right of a large red circle"},
            "a small red circle right of a large blue square"),
    }
    seen: Counter[str] = Counter()
    for seed in range(60):
        item = compositional_item(scene, np.random.default_rng(seed))
        attr_allowed, rel_expected = expected[item["caption"]]
        assert item["negatives"][0] in attr_allowed
        assert item["negatives"][1] == rel_expected
        seen[item["caption"]] += 1
        seen["size swap"] += item["negatives"][0] in {
            "a large red circle left of a small blue square",
            "a small blue square right of a large red circle",
        }
    assert set(seen) >= set(expected) and seen["size swap"] > 0
    with pytest.raises(ValueError, match="different colours and shapes"):
        same_shape = Scene(objects=(a, Obj("circle", "blue", "small", 0.75, 0.5)), relation="left of")
        compositional_item(same_shape, np.random.default_rng(0))


def test_cli_runs_refuses_to_mix_and_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = [
        "synth-shapes", "--out", str(out), "--train-samples", "12", "--seed", "1", "--image-size", "32",
        "--shard-size", "5", "--zeroshot-per-class", "1", "--retrieval-samples", "2",
        "--compositional-samples", "2",
    ]
    assert main(argv) == 0
    assert "12 train images in 3 shards" in capsys.readouterr().out
    assert json.loads((out / "dataset.json").read_text())["counts"]["zeroshot"] == 16
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--train-samples", "6"]) == 0
    assert sorted(p.name for p in (out / "train").glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    assert main(["synth-shapes", "--out", str(tmp_path / "bad"), "--train-samples", "0"]) == 2
    assert "--train-samples must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_python_dash_m_entry_point() -> None:
    cmd = [sys.executable, "-m", "data_prep", "synth-shapes", "--help"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--train-samples" in proc.stdout and "--zeroshot-per-class" in proc.stdout
