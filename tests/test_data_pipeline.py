"""The training stream: shard specs, epoch splits, decoding, skip counting, batch contents."""

import io
import json

import pytest
import torch
import webdataset as wds
from PIL import Image

from vlp.data.pipeline import build_train_loader
from vlp.data.shards import count_samples, expand_shards
import itertools

from vlp.data.sources import EpochShardStream
from vlp.data.tokenizers import build_tokenizer
from vlp.data.transforms import eval_transform


def _jpeg(colour, size=20) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _write_shards(root, shards):
    """shards: list of lists of sample dicts; writes root/shard-N.tar and sizes.json."""
    sizes = {}
    for i, samples in enumerate(shards):
        name = f"shard-{i:06d}.tar"
        with wds.TarWriter(str(root / name)) as sink:
            for s in samples:
                sink.write(s)
        sizes[name] = len(samples)
    (root / "sizes.json").write_text(json.dumps(sizes))


def _good(key, colour=(255, 0, 0), caption="a red square"):
    return {"__key__": key, "jpg": _jpeg(colour), "txt": caption}


def test_expand_shards_directory_brace_and_errors(tmp_path):
    _write_shards(tmp_path, [[_good("a")], [_good("b")], [_good("c")]])
    by_dir = expand_shards(str(tmp_path))
    by_brace = expand_shards(str(tmp_path / "shard-{000000..000002}.tar"))
    assert by_dir == by_brace == [str(tmp_path / f"shard-{i:06d}.tar") for i in range(3)]
    assert expand_shards(f"{tmp_path}/shard-000000.tar::{tmp_path}/shard-000002.tar") == [by_dir[0], by_dir[2]]
    assert count_samples(by_dir) == 3
    with pytest.raises(FileNotFoundError, match=r"2 shard\(s\) not found, first: .*shard-000006.tar"):
        expand_shards(str(tmp_path / "shard-{000006..000007}.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .tar shards in directory"):
        expand_shards(str(tmp_path / "empty"))


def test_epoch_split_covers_every_shard_once_per_epoch():
    urls = [f"s{i}" for i in range(10)]
    per_rank = []
    for rank in range(2):
        stream = iter(EpochShardStream(urls, seed=3, rank=rank, world_size=2))
        per_rank.append([next(stream)["url"] for _ in range(5)])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(urls)
    # the next epoch is a different permutation of the same shards
    stream = iter(EpochShardStream(urls, seed=3, rank=0, world_size=1))
    epoch0, epoch1 = [next(stream)["url"] for _ in range(10)], [next(stream)["url"] for _ in range(10)]
    assert sorted(epoch0) == sorted(epoch1) == sorted(urls) and epoch0 != epoch1


def test_loader_skips_and_counts_bad_samples(tmp_path):
    bad = [
        {"__key__": "no_image", "txt": "a caption"},
        {"__key__": "no_caption", "jpg": _jpeg((0, 0, 255))},
        {"__key__": "latin1", "jpg": _jpeg((0, 0, 255)), "txt": "caf\xe9".encode("latin-1")},
        {"__key__": "empty", "jpg": _jpeg((0, 0, 255)), "txt": "   "},
        {"__key__": "truncated", "jpg": _jpeg((0, 0, 255))[:40], "txt": "a blue square"},
    ]
    good = [_good(f"g{i}", caption=f"caption {i}") for i in range(6)]
    _write_shards(tmp_path, [good[:3] + bad, good[3:]])
    loader = build_train_loader(str(tmp_path), batch_size=3, transform=eval_transform(16),
                                tokenizer=build_tokenizer("open_clip", 8), workers=0, shuffle_buffer=0)
    batches = iter(loader)
    first_epoch = [next(batches), next(batches)]
    skipped = {}
    for b in first_epoch:
        for k, v in b["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
    assert skipped == {"missing_image": 1, "missing_caption": 1, "caption_not_utf8": 1,
                       "empty_caption": 1, "image_unreadable": 1}
    for b in first_epoch:
        assert b["image"].shape == (3, 3, 16, 16) and b["text"].shape == (3, 8)
    # every good sample appears exactly once in the epoch
    tok = build_tokenizer("open_clip", 8)
    seen = torch.cat([b["text"] for b in first_epoch])
    want = tok([f"caption {i}" for i in range(6)])
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, want.tolist()))


def test_truncated_tar_is_counted_not_fatal(tmp_path):
    _write_shards(tmp_path, [[_good(f"a{i}") for i in range(4)], [_good(f"b{i}") for i in range(4)]])
    data = (tmp_path / "shard-000001.tar").read_bytes()
    (tmp_path / "shard-000001.tar").write_bytes(data[: len(data) // 2 + 100])
    loader = build_train_loader(str(tmp_path), batch_size=2, transform=eval_transform(16),
                                tokenizer=build_tokenizer("open_clip", 8), workers=0, shuffle_buffer=0)
    batches = iter(loader)
    got = [next(batches) for _ in range(6)]
    assert all(b["image"].shape[0] == 2 for b in got)
    reasons = {k for b in got for k in b["skipped"]}
    assert any(r.startswith("read_error:") for r in reasons)


def test_too_few_shards_for_readers_is_a_clear_error(tmp_path):
    _write_shards(tmp_path, [[_good("a")]])
    with pytest.raises(ValueError, match="data.workers: 1 shard\\(s\\) for 2 rank\\(s\\) x 1 worker"):
        build_train_loader(str(tmp_path), 1, eval_transform(16), build_tokenizer("open_clip", 8),
                           workers=1, world_size=2)


def _png_header_only(width, height) -> bytes:
    """A PNG whose header claims width x height (no pixel data): a decompression bomb without the memory."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_bombs_empty_files_and_transform_errors_are_counted(tmp_path):
    class Fussy:
        """A transform that fails on 21 px images (an unexpected error, not a ValueError)."""

        def __call__(self, image):
            if image.size == (21, 21):
                raise RuntimeError("cannot handle this one")
            return eval_transform(16)(image)

    samples = [_good("ok1"), {"__key__": "bomb", "png": _png_header_only(20000, 20000), "txt": "huge"},
               {"__key__": "zero", "jpg": b"", "txt": "empty file"},
               {"__key__": "odd", "jpg": _jpeg((9, 9, 9), size=21), "txt": "odd size"}, _good("ok2")]
    _write_shards(tmp_path, [samples])
    loader = build_train_loader(str(tmp_path), batch_size=8, transform=Fussy(), tokenizer=build_tokenizer("open_clip", 8),
                                workers=0, shuffle_buffer=0, epochs=1)
    (batch,) = list(loader)
    assert batch["key"] == ["ok1", "ok2"]
    assert batch["skipped"] == {"image_too_large": 1, "image_unreadable": 1, "sample_error:RuntimeError": 1}


def test_a_resumed_stream_starts_at_its_epoch():
    from vlp.data.shards import ShardSource
    from vlp.data.sources import ResampledShardStream
    from vlp.train.resume import resume_epoch

    urls = [f"s{i}" for i in range(6)]
    fresh = iter(EpochShardStream(urls, seed=3, rank=0, world_size=1))
    first_three_epochs = [next(fresh) for _ in range(18)]
    resumed = iter(EpochShardStream(urls, seed=3, rank=0, world_size=1, start_epoch=2))
    assert [next(resumed) for _ in range(6)] == first_three_epochs[12:]  # epoch 2, same permutation
    bounded = list(EpochShardStream(urls, seed=3, epochs=1, start_epoch=2))
    assert bounded == first_three_epochs[12:]

    source = [ShardSource(urls=urls, weight=1.0)]
    draws = lambda start: [d["url"] for d in itertools.islice(iter(ResampledShardStream(source, 5, 0, start)), 50)]
    assert draws(0) == draws(0) and draws(640) == draws(640) and draws(640) != draws(0)
    first = next(iter(ResampledShardStream(source, 5, 0, 640)))
    assert first["epoch"] == 640  # captions keep varying after a resume

    assert resume_epoch(1000, 256, resampled=False) == 3
    assert resume_epoch(1000, None, resampled=True) == 1000
    assert resume_epoch(5120, 10000, resampled=True) == 5120  # inside the first epoch: still a fresh sequence
    assert resume_epoch(1000, None, resampled=False) == 0
