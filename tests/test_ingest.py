"""``vlp-prep ingest`` end to end on tiny fixtures: skip reasons, --strict, resume, dedup, resize."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

import data_prep.ingest_chunks as ingest
from data_prep.__main__ import main as prep_main
from data_prep.ingest import IngestError, run_ingest
from data_prep.ingest_options import IngestOptions
from data_prep.shard_writer import read_tar_members
from ingest_fixtures import image_bytes, write_bomb_png, write_image, write_truncated_jpeg
from test_ingest_readers import write_img2dataset


def _good_folder(root: Path, n: int, size: tuple[int, int] = (32, 24)) -> Path:
    for i in range(n):
        write_image(root / f"img{i:02d}.jpg", i, size)
        (root / f"img{i:02d}.txt").write_text(f"caption {i}")
    return root


def _bad_folder(root: Path) -> Path:
    """5 good pairs plus one of each planted bad input."""
    _good_folder(root, 5)
    write_truncated_jpeg(root / "truncated.jpg")
    (root / "truncated.txt").write_text("cut short")
    (root / "zero.jpg").write_bytes(b"")
    (root / "zero.txt").write_text("zero bytes")
    write_bomb_png(root / "bomb.png")  # 20000 x 20000 = 4e8 px > Pillow's 89.5 Mpx default cap
    (root / "bomb.txt").write_text("too many pixels")
    write_image(root / "latin.jpg", 90)
    (root / "latin.txt").write_bytes("café au lait".encode("latin-1"))
    write_image(root / "blank.jpg", 91)
    (root / "blank.txt").write_text("  \n")
    (root / "orphan.txt").write_text("its image is missing")
    write_image(root / "nocap.jpg", 92)
    return root


def _opts(inp: Path, out: Path, **kw) -> IngestOptions:
    return IngestOptions(inputs=[str(inp)], output=str(out), **kw)


def _tree(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def _samples(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for path in sorted(out.glob("*.tar")):
        for name, data in read_tar_members(path).items():
            key, _, ext = name.partition(".")
            samples.setdefault(key, {})[ext] = data
    return samples


def test_bad_inputs_are_skipped_and_counted_exactly(tmp_path: Path) -> None:
    out = tmp_path / "out"
    stats = run_ingest(_opts(_bad_folder(tmp_path / "in"), out, shard_samples=3), progress=False)
    assert stats["skipped"] == {"caption_empty": 1, "caption_not_utf8": 1, "decompression_bomb": 1,
                                "empty_file": 1, "missing_caption": 1, "missing_file": 1, "truncated_image": 1}
    assert stats["input_records"] == 12 and stats["samples_written"] == 5 and stats["skipped_total"] == 7
    assert json.loads((out / "stats.json").read_text())["skipped"] == stats["skipped"]
    # folder order: blank, bomb, img00..04, latin, nocap, orphan, truncated, zero, cut into chunks of
    # 3 records, one shard each; a key is the record's position (img00 is record 2). The last chunk
    # (orphan, truncated: its header is fine, it fails at decode; zero) writes no shard.
    assert json.loads((out / "sizes.json").read_text()) == {"shard-000000.tar": 1, "shard-000001.tar": 3,
                                                            "shard-000002.tar": 1}
    assert stats["bytes"] == sum(len(b) for b in _tree(out).values()) and stats["chunks"] == 4
    samples = _samples(out)
    assert sorted(samples) == [f"{i:09d}" for i in range(2, 7)]
    first = samples["000000002"]
    assert first["txt"] == b"caption 0"
    meta = json.loads(first["json"])
    assert meta["source_id"] == "img00.jpg" and meta["captions"] == ["caption 0"]
    assert (meta["original_width"], meta["original_height"], meta["width"], meta["height"]) == (32, 24, 32, 24)
    assert Image.open(io.BytesIO(first["jpg"])).size == (32, 24)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_lower_pixel_cap_counts_large_images_as_bombs(tmp_path: Path) -> None:
    inp = _good_folder(tmp_path / "in", 2)
    write_image(inp / "big.jpg", 7, (64, 64))
    (inp / "big.txt").write_text("big")
    stats = run_ingest(_opts(inp, tmp_path / "out", max_pixels=32 * 32), progress=False)
    assert stats["skipped"] == {"decompression_bomb": 1} and stats["samples_written"] == 2
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # the cap is restored after use


@pytest.mark.parametrize("bad, name", [("bomb", "bomb.png"), ("truncated", "truncated.jpg"),
                                       ("latin", "latin.jpg"), ("orphan", "orphan.txt")])
def test_strict_fails_on_first_bad_file_naming_it(tmp_path: Path, capsys, bad: str, name: str) -> None:
    inp = _good_folder(tmp_path / "in", 2)
    src = _bad_folder(tmp_path / "bad")
    for path in src.glob(f"{bad}.*"):
        (inp / path.name).write_bytes(path.read_bytes())
    code = prep_main(["ingest", "--input", str(inp), "--output", str(tmp_path / "out"), "--strict", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert name in err and "error" in err
    assert not (tmp_path / "out" / "stats.json").exists()


def test_resume_after_crash_mid_shard_gives_identical_shards(tmp_path: Path, monkeypatch) -> None:
    inp = _bad_folder(tmp_path / "in")
    _good_folder(inp / "more", 6)
    clean = run_ingest(_opts(inp, tmp_path / "clean", shard_samples=4), progress=False)
    assert clean["shards"] == 4 and clean["chunks"] == 5 and clean["samples_written"] == 11

    real, calls = ingest.encode_entry, {"n": 0}

    def crash_after_six(entry, opts):
        calls["n"] += 1
        if calls["n"] > 6:  # in the middle of the third chunk (the first two encode 2 and 3 images)
            raise KeyboardInterrupt("killed")
        return real(entry, opts)

    out = tmp_path / "resumed"
    monkeypatch.setattr(ingest, "encode_entry", crash_after_six)
    with pytest.raises(KeyboardInterrupt):
        run_ingest(_opts(inp, out, shard_samples=4), progress=False)
    assert sorted(_tree(out)) == ["shard-000000.tar", "shard-000001.tar"]  # the half-written third left no .tar
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    (out / ".shard-000002.tar.x1y2.tmp").write_bytes(b"partial")  # as a SIGKILL would leave it
    monkeypatch.setattr(ingest, "encode_entry", real)
    resumed = run_ingest(_opts(inp, out, shard_samples=4), progress=False)
    assert resumed["shards_reused"] == 2 and resumed["shards_written"] == 3  # chunks reused / run
    assert _tree(out) == _tree(tmp_path / "clean")
    assert (out / "sizes.json").read_bytes() == (tmp_path / "clean" / "sizes.json").read_bytes()
    for key in ("samples_written", "skipped", "bytes", "shards"):
        assert resumed[key] == clean[key]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    again = run_ingest(_opts(inp, out, shard_samples=4), progress=False)
    assert again["shards_reused"] == 5 and again["shards_written"] == 0 and _tree(out) == _tree(tmp_path / "clean")


def test_workers_and_seed_are_deterministic(tmp_path: Path) -> None:
    inp = _good_folder(tmp_path / "in", 9)
    run_ingest(_opts(inp, tmp_path / "w1", shard_samples=2, seed=5), progress=False)
    run_ingest(_opts(inp, tmp_path / "w2", shard_samples=2, seed=5, workers=2), progress=False)
    assert _tree(tmp_path / "w1") == _tree(tmp_path / "w2") and len(_tree(tmp_path / "w1")) == 5
    run_ingest(_opts(inp, tmp_path / "plain", shard_samples=2), progress=False)
    # the seed shuffles the records inside each chunk: written order changes, keys stay input positions
    written = lambda out: [n.split(".")[0] for p in sorted(out.glob("*.tar")) for n in read_tar_members(p)][::3]  # noqa: E731
    assert written(tmp_path / "plain") == [f"{i:09d}" for i in range(9)]
    assert written(tmp_path / "w1") != written(tmp_path / "plain")
    assert sorted(written(tmp_path / "w1")) == written(tmp_path / "plain")
    assert {k: json.loads(s["json"])["source_id"] for k, s in _samples(tmp_path / "w1").items()} == \
        {f"{i:09d}": f"img{i:02d}.jpg" for i in range(9)}


def test_rerun_with_other_options_is_refused(tmp_path: Path) -> None:
    inp = _good_folder(tmp_path / "in", 3)
    run_ingest(_opts(inp, tmp_path / "out", shard_samples=2), progress=False)
    with pytest.raises(IngestError, match="shard_samples"):
        run_ingest(_opts(inp, tmp_path / "out", shard_samples=3), progress=False)
    stats = run_ingest(_opts(inp, tmp_path / "out", shard_samples=3), overwrite=True, progress=False)
    assert json.loads((tmp_path / "out" / "sizes.json").read_text()) == {"shard-000000.tar": 3}
    assert stats["shards_reused"] == 0


def test_exact_duplicate_removal(tmp_path: Path) -> None:
    inp = _good_folder(tmp_path / "in", 4)
    for i, src in enumerate([0, 0, 2]):  # three copies of existing images, different captions
        (inp / f"z{i}.jpg").write_bytes((inp / f"img{src:02d}.jpg").read_bytes())
        (inp / f"z{i}.txt").write_text(f"copy {i}")
    kept = run_ingest(_opts(inp, tmp_path / "all"), progress=False)
    assert kept["samples_written"] == 7 and kept["skipped"] == {}
    stats = run_ingest(_opts(inp, tmp_path / "dedup", dedup=True), progress=False)
    assert stats["skipped"] == {"duplicate": 3} and stats["samples_written"] == 4
    assert sorted(s["txt"] for s in _samples(tmp_path / "dedup").values()) == [f"caption {i}".encode() for i in range(4)]


@pytest.mark.parametrize("mode, resize, upscale, expected", [
    ("shorter", 16, False, (21, 16)), ("longer", 16, False, (16, 12)),
    ("shorter", 48, False, (32, 24)), ("shorter", 48, True, (64, 48))])
def test_resize_modes(tmp_path: Path, mode: str, resize: int, upscale: bool, expected: tuple[int, int]) -> None:
    inp = _good_folder(tmp_path / "in", 1, (32, 24))
    run_ingest(_opts(inp, tmp_path / "out", resize=resize, resize_mode=mode, upscale=upscale), progress=False)
    (sample,) = _samples(tmp_path / "out").values()
    assert Image.open(io.BytesIO(sample["jpg"])).size == expected
    meta = json.loads(sample["json"])
    assert (meta["width"], meta["height"], meta["original_width"], meta["original_height"]) == (*expected, 32, 24)


def test_webp_filters_and_caption_bounds(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    write_image(inp / "ok.jpg", 1, (40, 30))
    (inp / "ok.txt").write_text("a fine caption")
    write_image(inp / "small.jpg", 2, (12, 40))
    (inp / "small.txt").write_text("a small image")
    write_image(inp / "wide.jpg", 3, (90, 20))
    (inp / "wide.txt").write_text("a wide image")
    write_image(inp / "short.jpg", 4, (40, 40))
    (inp / "short.txt").write_text("ab")
    write_image(inp / "long.jpg", 5, (40, 40))
    (inp / "long.txt").write_text("x" * 50)
    stats = run_ingest(_opts(inp, tmp_path / "out", image_format="webp", quality=80, min_size=16,
                             max_aspect_ratio=3.0, min_caption_chars=3, max_caption_chars=20), progress=False)
    assert stats["skipped"] == {"too_small": 1, "aspect_ratio": 1, "caption_too_short": 1, "caption_too_long": 1}
    (sample,) = _samples(tmp_path / "out").values()
    assert set(sample) == {"webp", "txt", "json"} and sample["txt"] == b"a fine caption"
    image = Image.open(io.BytesIO(sample["webp"]))
    assert image.format == "WEBP" and image.size == (40, 30)


def test_shard_size_by_bytes(tmp_path: Path) -> None:
    inp = _good_folder(tmp_path / "in", 6)
    one = len((inp / "img00.jpg").read_bytes())
    stats = run_ingest(_opts(inp, tmp_path / "out", shard_bytes=int(one * 2.5)), progress=False)
    sizes = json.loads((tmp_path / "out" / "sizes.json").read_text())
    assert sorted(sizes.values()) == [2, 2, 2] and stats["shards"] == 3


def test_coco_multi_caption_and_img2dataset_reshard(tmp_path: Path) -> None:
    write_image(tmp_path / "img" / "1.jpg", 1, (40, 20))
    ann = {"images": [{"id": 1, "file_name": "1.jpg"}],
           "annotations": [{"image_id": 1, "caption": " first "}, {"image_id": 1, "caption": ""},
                           {"image_id": 1, "caption": "second"}]}
    (tmp_path / "cap.json").write_text(json.dumps(ann))
    code = prep_main(["ingest", "--input", str(tmp_path / "cap.json"), "--image-root", str(tmp_path / "img"),
                      "--output", str(tmp_path / "coco"), "--no-progress"])
    assert code == 0
    (sample,) = _samples(tmp_path / "coco").values()
    assert sample["txt"] == b"first" and json.loads(sample["json"])["captions"] == ["first", "second"]
    stats = json.loads((tmp_path / "coco" / "stats.json").read_text())
    assert stats["dropped_captions"] == {"caption_empty": 1} and stats["samples_written"] == 1

    i2d = write_img2dataset(tmp_path / "i2d", [(f"{k:09d}", image_bytes(k, (48, 32)), f"cap {k}") for k in range(5)])
    stats = run_ingest(_opts(i2d, tmp_path / "re", resize=16, shard_samples=2), progress=False)
    assert stats["samples_written"] == 5 and stats["shards"] == 3
    samples = _samples(tmp_path / "re")
    meta = json.loads(samples["000000004"]["json"])
    assert meta["source_id"] == "00000.tar/000000004" and meta["url"] == "http://x/000000004"
    assert Image.open(io.BytesIO(samples["000000004"]["jpg"])).size == (24, 16)


SLOW_CLI = """
import sys, time
import data_prep.ingest_chunks as ingest
real = ingest.encode_entry
def slow(entry, opts):
    time.sleep(0.05)
    return real(entry, opts)
ingest.encode_entry = slow
from data_prep.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_sigkill_mid_shard(tmp_path: Path, cli_env: dict) -> None:
    """A real kill -9 of the CLI while the second shard is half written (its temp file exists)."""
    import subprocess
    import sys
    import time

    inp = _good_folder(tmp_path / "in", 12)
    args = ["ingest", "--input", str(inp), "--shard-samples", "4", "--no-progress"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *args, "--output", str(out)], env=cli_env,
                            cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 120
    try:
        while not ((out / "shard-000000.tar").exists() and list(out.glob(".shard-000001.tar.*.tmp"))):
            assert proc.poll() is None, "ingest finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()
    assert sorted(_tree(out)) == ["shard-000000.tar"] and list(out.glob(".*.tmp"))
    assert prep_main([*args, "--output", str(out)]) == 0
    assert prep_main([*args, "--output", str(tmp_path / "clean")]) == 0
    assert _tree(out) == _tree(tmp_path / "clean") and len(_tree(out)) == 3
    assert json.loads((out / "stats.json").read_text())["shards_reused"] == 1
    assert not list(out.glob(".*.tmp"))
