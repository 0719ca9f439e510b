"""What the loader reads: URL forms, img2dataset and CLIP_benchmark shards, caption lists, hard
negatives, reduced-size JPEG decoding, the training transform, skip reports, the config fields."""

import io
import json
import logging
import math
import random

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torchvision import transforms as T

from test_data_pipeline import _good, _jpeg, _write_shards
from vlp.config import ConfigError, load_config
from vlp.data.decode import decode_image, pick_caption, sample_negatives
from vlp.data.pipeline import build_train_loader, epoch_samples, train_sources
from vlp.data.shards import expand_shards, gopen_fsspec, wds_gopen
from vlp.data.skips import SkipReport
from vlp.data.tokenizers import build_tokenizer
from vlp.data.transforms import TrainTransform, train_transform

TOK = build_tokenizer("open_clip", 12)


def _one_epoch(spec, batch_size=4, **kw):
    kw.setdefault("transform", train_transform(16))
    loader = build_train_loader(spec, batch_size, tokenizer=TOK, workers=0, shuffle_buffer=0, epochs=1, **kw)
    return list(loader)


def test_url_forms_pipe_file_and_fsspec(tmp_path):
    _write_shards(tmp_path, [[_good(f"a{i}") for i in range(3)], [_good(f"b{i}") for i in range(2)]])
    tar0, tar1 = tmp_path / "shard-000000.tar", tmp_path / "shard-000001.tar"
    want = ["a0", "a1", "a2", "b0", "b1"]
    assert expand_shards(f"pipe:cat {tar0}") == [f"pipe:cat {tar0}"]
    assert expand_shards(f"pipe:cat {tmp_path}/shard-{{000000..000001}}.tar") == [f"pipe:cat {tar0}", f"pipe:cat {tar1}"]
    assert expand_shards("s3://bucket/train/s-{0..2}.tar") == [f"s3://bucket/train/s-{i}.tar" for i in range(3)]
    assert expand_shards(tmp_path.as_uri()) == [tar0.as_uri(), tar1.as_uri()]
    with pytest.raises(FileNotFoundError, match="1 shard"):
        expand_shards((tmp_path / "nope.tar").as_uri())
    for spec in (f"pipe:cat {tar0}::pipe:cat {tar1}", f"{tar0.as_uri()}::{tar1.as_uri()}",
                 f"pipe:cat {tmp_path}/shard-{{000000..000001}}.tar"):
        keys = sorted(k for b in _one_epoch(spec) for k in b["key"])
        assert keys == want, spec
    # fsspec protocols webdataset has no handler for open through fsspec (memory:// needs no network)
    assert wds_gopen.gopen_schemes["s3"] is gopen_fsspec and wds_gopen.gopen_schemes["memory"] is gopen_fsspec
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/vlp-test/s0.tar", tar0.read_bytes())
    fs.pipe("/vlp-test/s1.tar", tar1.read_bytes())
    keys = sorted(k for b in _one_epoch("memory://vlp-test/s{0..1}.tar") for k in b["key"])
    assert keys == want
    # a shard that cannot be opened is a counted read error, not a crash
    batches = _one_epoch(f"pipe:cat {tar0}::pipe:cat {tmp_path}/missing.tar")
    assert sorted(k for b in batches for k in b["key"]) == ["a0", "a1", "a2"]


def _img2dataset_dir(root, n=5):
    """img2dataset's webdataset output: 00000.tar + 00000.parquet + 00000_stats.json (+ extra files)."""
    with wds.TarWriter(str(root / "00000.tar")) as sink:
        for i in range(n):
            key = f"{i:09d}"
            meta = {"url": f"https://example.com/{i}.jpg", "caption": f"photo {i}", "key": key, "status": "success",
                    "error_message": None, "width": 24, "height": 20, "original_width": 640, "original_height": 480}
            sink.write({"__key__": key, "jpg": _jpeg((10 * i, 0, 0), size=24), "txt": f"photo {i}", "json": meta})
    (root / "00000.parquet").write_bytes(b"PAR1 not really parquet")
    (root / "00000_stats.json").write_text(json.dumps({"count": n + 1, "successes": n, "failed_to_download": 1}))
    (root / "stats.json").write_text("{}")


def test_reads_img2dataset_output(tmp_path):
    _img2dataset_dir(tmp_path)
    assert expand_shards(str(tmp_path)) == [str(tmp_path / "00000.tar")]  # the parquet and stats files are ignored
    assert epoch_samples(str(tmp_path)) == 5  # from 00000_stats.json "successes"
    batches = _one_epoch(str(tmp_path), batch_size=5)
    assert len(batches) == 1 and batches[0]["image"].shape == (5, 3, 16, 16) and batches[0]["skipped"] == {}
    order = batches[0]["key"]
    assert batches[0]["text"].tolist() == TOK([f"photo {int(k)}" for k in order]).tolist()


def test_reads_clip_benchmark_sets(tmp_path):
    """CLIP_benchmark's wds layout: test/0.tar with webp/png images, cls labels, txt with one caption per line."""
    (tmp_path / "test").mkdir()
    samples = []
    for i in range(4):
        buf = io.BytesIO()
        Image.new("RGB", (20, 18), (0, 60 * i, 0)).save(buf, format="WEBP" if i % 2 else "PNG")
        samples.append({"__key__": f"s{i:07d}", "webp" if i % 2 else "png": buf.getvalue(), "cls": str(i % 2),
                        "txt": f"first caption {i}\nsecond caption {i}\n"})
    with wds.TarWriter(str(tmp_path / "test" / "0.tar")) as sink:
        for s in samples:
            sink.write(s)
    (tmp_path / "test" / "nshards.txt").write_text("1\n")
    (tmp_path / "classnames.txt").write_text("zero\none\n")
    shards = str(tmp_path / "test" / "{0..0}.tar")
    batch = _one_epoch(shards, image_keys=("webp", "png", "jpg"), seed=3)[0]
    assert batch["skipped"] == {} and batch["image"].shape == (4, 3, 16, 16)
    want = [pick_caption([f"first caption {int(k[1:])}", f"second caption {int(k[1:])}"], 3, 0, k) for k in batch["key"]]
    assert batch["text"].tolist() == TOK(want).tolist()
    by_class = _one_epoch(shards, image_keys=("webp", "png"), caption_key="cls")[0]
    assert by_class["text"].tolist() == TOK([str(int(k[1:]) % 2) for k in by_class["key"]]).tolist()


def test_caption_list_draws_one_per_epoch_reproducibly(tmp_path):
    captions = {f"k{i}": [f"caption {i} {c}" for c in "abc"] for i in range(12)}
    samples = [{"__key__": k, "jpg": _jpeg((0, 0, 200)), "txt": v[0], "json": {"captions": v}} for k, v in captions.items()]
    _write_shards(tmp_path, [samples[:6], samples[6:]])

    def drawn(seed):
        loader = build_train_loader(str(tmp_path), 4, train_transform(16), TOK, workers=0, shuffle_buffer=0,
                                    epochs=2, seed=seed)
        return [(k, tuple(t)) for b in loader for k, t in zip(b["key"], b["text"].tolist())]

    first = drawn(seed=11)
    assert first == drawn(seed=11)
    epochs = [first[:12], first[12:]]
    for epoch, part in enumerate(epochs):
        for key, tokens in part:
            assert list(tokens) == TOK([pick_caption(captions[key], 11, epoch, key)])[0].tolist()
    by_key = [dict(p) for p in epochs]
    assert sum(by_key[0][k] != by_key[1][k] for k in captions) >= 4  # draws change between epochs
    assert len({TOK([pick_caption(captions["k0"], 11, e, "k0")])[0, 3].item() for e in range(20)}) == 3


def test_hard_negatives_are_padded_and_trimmed_to_k(tmp_path):
    negs = {"n0": ["a blue square", "a red circle", "square a red"], "n1": ["one only"], "n2": None}
    samples = []
    for key, lst in negs.items():
        s = _good(key, caption=f"caption of {key}")
        if lst is not None:
            s["neg.json"] = {"caption": f"caption of {key}", "negatives": lst, "types": ["swap_attribute"] * len(lst)}
        samples.append(s)
    samples.append({**_good("bad"), "neg.json": b"{not json"})
    # several captions: the negatives of whichever caption is drawn (data_prep's "alternatives")
    samples.append({**_good("n3"), "json": {"captions": ["cap x", "cap y"]},
                    "neg.json": {"caption": "cap x", "negatives": ["neg of x"], "types": ["shuffle"],
                                 "alternatives": [{"caption": "cap y", "negatives": ["neg of y", "y2"], "types": []}]}})
    _write_shards(tmp_path, [samples])
    batch = _one_epoch(str(tmp_path), batch_size=8, num_negatives=2, seed=4)[0]
    assert batch["skipped"] == {"negatives_unreadable": 1}
    assert batch["key"] == ["n0", "n1", "n2", "n3"]
    assert batch["neg_text"].shape == (4, 2, 12) and batch["neg_text"].dtype == torch.long
    assert batch["neg_mask"][:3].tolist() == [[True, True], [True, False], [False, False]]
    assert batch["neg_text"][0].tolist() == TOK(["a blue square", "a red circle"]).tolist()
    assert batch["neg_text"][1].tolist() == TOK(["one only", "one only"]).tolist()  # padded by repetition
    assert batch["neg_text"][2].tolist() == TOK(["", ""]).tolist()  # none: the empty caption, masked out
    drawn = pick_caption(["cap x", "cap y"], 4, 0, "n3")
    assert batch["text"][3].tolist() == TOK([drawn])[0].tolist()
    want = ["neg of x", "neg of x"] if drawn == "cap x" else ["neg of y", "y2"]
    assert batch["neg_text"][3].tolist() == TOK(want).tolist()
    alternative = {"neg.json": json.dumps(samples[-1]["neg.json"]).encode()}
    assert sample_negatives(alternative, "cap y") == ["neg of y", "y2"]
    assert sample_negatives(alternative, "cap x") == ["neg of x"]
    assert "neg_text" not in _one_epoch(str(tmp_path), batch_size=8)[0]


def test_jpeg_draft_keeps_the_smallest_crop_at_full_resolution():
    transform = TrainTransform(224, (0.9, 1.0))
    assert transform.draft_size == math.ceil(224 / math.sqrt(0.9 * 0.75))  # 273
    buf = io.BytesIO()
    Image.new("RGB", (1024, 768), (90, 120, 30)).save(buf, format="JPEG")
    big = buf.getvalue()
    assert decode_image(big).size == (1024, 768)
    assert decode_image(big, transform.draft_size).size == (512, 384)  # 1/2 scale: short side 384 >= 273
    assert decode_image(big, 100).size == (256, 192)  # 1/4 scale: 192 >= 100, 1/8 would be 96
    assert decode_image(_jpeg((1, 2, 3), size=300), transform.draft_size).size == (300, 300)  # too small to shrink
    png = io.BytesIO()
    Image.new("L", (600, 600), 7).save(png, format="PNG")
    decoded = decode_image(png.getvalue(), 100)
    assert decoded.size == (600, 600) and decoded.mode == "RGB"


def test_train_transform_matches_pillow_bicubic_and_torchvision_crops():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((160, 120), Image.BICUBIC)
    ours = TrainTransform(64, (0.5, 1.0), rng=random.Random(0))
    normalize = T.Compose([T.ToTensor(), T.Normalize((0.48145466, 0.4578275, 0.40821073),
                                                     (0.26862954, 0.26130258, 0.27577711))])
    for box in [(0, 0, 160, 120), (13, 7, 101, 90), (50, 20, 64, 64)]:
        got = ours.resize_box(image, box)
        left, top, w, h = box
        want = np.asarray(image.crop((left, top, left + w, top + h)).resize((64, 64), Image.BICUBIC)).astype(int)
        diff = np.abs(got.permute(1, 2, 0).numpy().astype(int) - want)
        assert got.dtype == torch.uint8 and got.shape == (3, 64, 64)
        assert diff.max() <= 2 and diff.mean() < 0.2, box  # Pillow's filter, torch's rounding
    boxes = [ours.crop_box(160, 120) for _ in range(2000)]
    fractions = [w * h / (160 * 120) for _, _, w, h in boxes]
    ratios = [w / h for _, _, w, h in boxes]
    assert 0.48 < min(fractions) < 0.52 and 0.97 < max(fractions) <= 1.0
    assert min(ratios) > 0.74 and max(ratios) < 1.34 and all(l + w <= 160 and t + h <= 120 for l, t, w, h in boxes)
    assert ours.crop_box(400, 100) == (133, 0, 133, 100)  # no random box fits 4:1 at area >= 0.5: centred 4:3
    tensor = TrainTransform(64, (1.0, 1.0), rng=random.Random(1))(image)
    reference = normalize(Image.fromarray(TrainTransform(64, (1.0, 1.0), rng=random.Random(1))
                                          .crop_resize(image).permute(1, 2, 0).numpy()))
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 64, 64) and tensor.is_contiguous()
    assert torch.allclose(tensor, reference, atol=1e-5)
    jittered = TrainTransform(64, (1.0, 1.0), color_jitter=0.4, rng=random.Random(1)).crop_resize(image)
    assert jittered.dtype == torch.uint8 and jittered.shape == (3, 64, 64)


def test_skip_report_logs_periodically_with_totals(caplog):
    now = [0.0]
    report = SkipReport(interval_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="vlp.data.skips"):
        assert report.update({}) is False
        assert report.update({"image_unreadable": 1}) is True  # the first skip at once
        now[0] = 10
        assert report.update({"image_unreadable": 2, "empty_caption": 1}) is False
        now[0] = 61
        assert report.update({}) is True  # interval passed with unlogged skips
        now[0] = 200
        assert report.update({}) is False  # nothing new
    assert dict(report.totals) == {"image_unreadable": 3, "empty_caption": 1} and report.lines == 2
    assert "skipped 4 sample(s) so far (+3 since the last report): empty_caption=1, image_unreadable=3" in caplog.text


def test_data_config_fields(tmp_path):
    cfg = load_config(overrides=["data.sources=[{shards: a/, weight: 2}, {shards: b/}]", "data.resampled=true",
                                 "data.num_negatives=3"])
    assert [(s.shards, s.weight) for s in cfg.data.sources] == [("a/", 2.0), ("b/", 1.0)]
    assert train_sources(cfg.data) == [{"shards": "a/", "weight": 2.0}, {"shards": "b/", "weight": 1.0}]
    assert train_sources(load_config().data) == "data/shapes/train"
    for bad, match in [(["data.sources=[{shards: a/, weight: 2}, {shards: b/}]"], "data.resampled=true"),
                       (["data.sources=[{shards: a/, weight: 0}]", "data.resampled=true"], r"data.sources\[0\].weight"),
                       (["data.num_negatives=-1"], "data.num_negatives"),
                       (["data.skip_log_interval_s=0"], "data.skip_log_interval_s")]:
        with pytest.raises(ConfigError, match=match):
            load_config(overrides=bad)
