"""Exact mid-epoch resume of the training stream: a loader built from a ``LoaderPosition`` state yields
bitwise the batches the uninterrupted loader would have yielded next (0, 1 and 2 workers, epoch and
resampled mode, shuffle buffer on, jitter on, corrupt samples in the data); per-sample augmentation;
the shuffle buffer's statistics; what a resume re-reads; saving positions; refusing foreign ones."""

import collections
import io
import itertools
import pickle
import random

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from test_data_pipeline import _write_shards
from vlp.data import sources
from vlp.data.pipeline import build_train_loader
from vlp.data.position import LoaderPosition
from vlp.data.shuffle import ShuffleBuffer
from vlp.data.tokenizers import build_tokenizer
from vlp.data.transforms import train_transform

TOK = build_tokenizer("open_clip", 8)
SHARDS, PER_SHARD = 6, 10
CORRUPT = {"s1_4": "image_unreadable", "s4_7": "missing_caption"}  # read (and counted) but never batched
# shard 5 is cut inside s5_8's first file: a read error is counted and s5_7..s5_9 are lost (s5_7 too:
# the tar reader closes a sample when the next one starts, and there the archive ends)
TRUNCATED = "s5_8"
GOOD = sorted(f"s{i}_{j}" for i in range(SHARDS) for j in range(PER_SHARD)
              if f"s{i}_{j}" not in CORRUPT and (i, j) < (5, 7))


def _photo(rng, size=(32, 24)) -> bytes:
    """A noise JPEG: every crop box and jitter factor shows in its pixels."""
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume-shards")
    rng = np.random.default_rng(0)
    data = []
    for i in range(SHARDS):
        shard = []
        for j in range(PER_SHARD):
            key = f"s{i}_{j}"
            sample = {"__key__": key, "jpg": _photo(rng, (32 + j, 24 + i)), "txt": f"shard {i} sample {j}"}
            if CORRUPT.get(key) == "image_unreadable":
                sample["jpg"] = sample["jpg"][:30]
            elif key in CORRUPT:
                del sample["txt"]
            shard.append(sample)
        data.append(shard)
    _write_shards(root, data)
    tar = root / "shard-000005.tar"
    raw = tar.read_bytes()
    tar.write_bytes(raw[:raw.index(TRUNCATED.encode()) + 700])  # in the middle of s5_8's first file
    return root


def _loader(root, workers, resampled=False, position=None, batch_size=3, **kw):
    kw.setdefault("shuffle_buffer", 7)
    return build_train_loader(str(root), batch_size, train_transform(16, (0.5, 1.0), color_jitter=0.4), TOK,
                              workers=workers, seed=3, resampled=resampled, position=position, pin_memory=False, **kw)


def _take(loader, n):
    return list(itertools.islice(iter(loader), n))


def _state_after(batches):
    tracker = LoaderPosition()
    for batch in batches:
        tracker.observe(batch)
    return tracker.state_dict()


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g["key"] == w["key"]
        assert g["image"].dtype == torch.uint8 and torch.equal(g["image"], w["image"])
        assert torch.equal(g["text"], w["text"])
        assert g["skipped"] == w["skipped"]
        assert g["position"] == w["position"]


@pytest.mark.parametrize("resampled", [False, True], ids=["epoch", "resampled"])
@pytest.mark.parametrize("workers,n", [(0, 7), (1, 7), (2, 5), (2, 8)])
def test_resumed_loader_yields_the_uninterrupted_batches_bitwise(shards, workers, n, resampled):
    m = 16  # 55 good samples = 18+ batches an epoch: n + m crosses into the second epoch
    reference = _take(_loader(shards, workers, resampled), n + m)
    state = _state_after(reference[:n])
    assert state["batches"] == n
    readers = max(workers, 1)
    assert [r["batches"] for r in state["readers"]] == [len(range(i, n, readers)) for i in range(readers)]
    resumed = _take(_loader(shards, workers, resampled, position=state), m)
    _assert_same(resumed, reference[n:])
    assert [b["position"]["reader"] for b in resumed] == [(n + i) % readers for i in range(m)]
    if not resampled:
        assert {b["position"]["epoch"] for b in reference[n:]} == {0, 1}
    # the stream really was mid-shard with a full buffer: a restart from its epoch would differ
    assert all(0 < r["read"] for r in state["readers"]) and all(len(r["buffer"]) == 6 for r in state["readers"])  # 7 - the one just out
    restarted = _take(_loader(shards, workers, resampled), m)
    assert [b["key"] for b in restarted] != [b["key"] for b in resumed]


def test_resume_of_a_resume_continues_the_count(shards):
    reference = _take(_loader(shards, 2), 15)
    first = _state_after(reference[:3])
    loader = _loader(shards, 2, position=first)
    tracker = loader.position  # the loader's own tracker continues from the position it resumed
    middle = _take(loader, 5)
    for batch in middle:
        tracker.observe(batch)
    second = tracker.state_dict()
    assert second["batches"] == 8
    _assert_same(middle, reference[3:8])
    _assert_same(_take(_loader(shards, 2, position=second), 7), reference[8:15])


def test_an_interrupted_epoch_reads_every_sample_exactly_once(shards):
    for workers, n in [(2, 5), (1, 9)]:
        before = _take(_loader(shards, workers, epochs=1), n)
        after = list(_loader(shards, workers, epochs=1, position=_state_after(before)))
        keys = collections.Counter(k for b in before + after for k in b["key"])
        assert sorted(keys) == GOOD and set(keys.values()) == {1}
        skipped = collections.Counter()
        for b in before + after:
            skipped.update(b["skipped"])
        # counted once each, not again on resume
        assert dict(skipped) == {"image_unreadable": 1, "missing_caption": 1, "read_error:ReadError": 1}


def test_position_survives_torch_save_and_weights_only_load(shards, tmp_path):
    reference = _take(_loader(shards, 1, resampled=True), 12)
    state = _state_after(reference[:5])
    torch.save({"data_position": [state]}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)["data_position"][0]
    assert loaded == state
    _assert_same(_take(_loader(shards, 1, resampled=True, position=loaded), 7), reference[5:])


def test_position_of_a_loader_with_other_settings_is_refused(shards, tmp_path):
    state = _state_after(_take(_loader(shards, 1), 4))
    other = tmp_path / "other"
    other.mkdir()
    _write_shards(other, [[{"__key__": f"o{i}_{j}", "jpg": _photo(np.random.default_rng(i)), "txt": "x"}
                           for j in range(4)] for i in range(3)])
    for build, says in [
        (lambda: _loader(other, 1, position=state), r"the shards .*saved '6 shard\(s\), names [0-9a-f]+', now '3 shard"),
        (lambda: _loader(shards, 1, position=state, batch_size=4), "the batch size: saved 3, now 4"),
        (lambda: _loader(shards, 2, position=state), r"data.workers \(loader workers\): saved 1, now 2"),
        (lambda: _loader(shards, 1, position=state, world_size=2, rank=1),
         r"the world size \(processes\): saved 1, now 2; the rank: saved 0, now 1"),
        (lambda: _loader(shards, 1, position=state, resampled=True), "data.resampled: saved False, now True"),
        (lambda: _loader(shards, 1, position=state, shuffle_buffer=0), "data.shuffle_buffer: saved 7, now 0"),
    ]:
        with pytest.raises(ValueError, match=says):
            build()
    with pytest.raises(ValueError, match="not a loader position"):
        _loader(shards, 1, position={"batches": 3})
    # 0 and 1 workers are the same single reader: a position moves between them
    reference = _take(_loader(shards, 0), 9)
    _assert_same(_take(_loader(shards, 1, position=_state_after(reference[:4])), 5), reference[4:])


def test_augmentation_is_seeded_per_sample_not_per_worker(shards):
    """A sample's crop and jitter depend on (seed, epoch, key, view) only: the same in any worker,
    after any history, and another one next epoch."""
    def images(workers, shuffle_buffer, epoch=0):
        loader = _loader(shards, workers, shuffle_buffer=shuffle_buffer, epochs=1, start_epoch=epoch, image_views=2)
        return {key: (b["image"][i], b["image_aug"][i]) for b in loader for i, key in enumerate(b["key"])}

    main, workers, shuffled = images(0, 0), images(2, 0), images(2, 7)
    assert sorted(main) == sorted(workers) == sorted(shuffled) and len(main) == len(GOOD)
    for key, (image, aug) in main.items():
        assert torch.equal(image, workers[key][0]) and torch.equal(image, shuffled[key][0])
        assert torch.equal(aug, workers[key][1]) and torch.equal(aug, shuffled[key][1])
    assert all(not torch.equal(image, aug) for image, aug in main.values())  # two views: two crops
    next_epoch = images(0, 0, epoch=1)
    assert sum(not torch.equal(main[k][0], next_epoch[k][0]) for k in main) > len(GOOD) - 3  # other crops


def test_shuffle_buffer_gives_webdataset_shuffle_order():
    samples = [{"__pos__": (i // 10, i % 10), "n": i} for i in range(500)]
    for size, initial in [(64, 16), (7, 7), (1000, 1000)]:
        ours = [s["n"] for s in ShuffleBuffer(size, initial, random.Random(5))(iter(samples))]
        theirs = [s["n"] for s in wds.filters._shuffle(iter(samples), size, initial, rng=random.Random(5))]
        assert ours == theirs and sorted(ours) == list(range(500))
    # a buffer rebuilt from its state continues with the same outputs
    first = ShuffleBuffer(64, 16, random.Random(9))
    stream = first(iter(samples))
    head = [next(stream)["n"] for _ in range(100)]
    members, rng = first.state()
    assert len(members) == 63 and all(isinstance(m, tuple) and len(m) == 2 for m in members)
    by_pos = {s["__pos__"]: s for s in samples}
    consumed = len(head) + len(members)  # every sample read is out or in the buffer
    again = ShuffleBuffer(64, 16, random.Random(0))
    again.set_rng_state(pickle.loads(pickle.dumps(rng)))
    tail = [s["n"] for s in again(iter(samples[consumed:]), restored=[by_pos[m] for m in members])]
    assert head + tail != list(range(500)) and sorted(head + tail) == list(range(500))
    assert tail == [s["n"] for s in stream]


def test_position_of_a_2000_sample_buffer_is_small():
    buffer = ShuffleBuffer(2000, 1000, random.Random(1))
    stream = buffer({"__pos__": (i // 10_000, i % 10_000), "jpg": b"x"} for i in range(50_000))
    next(itertools.islice(stream, 20_000, None))
    members, rng = buffer.state()
    snapshot = {"reader": 0, "epoch": 0, "shard": 2, "read": 1000, "buffer": members, "rng": rng, "batches": 78}
    size = len(pickle.dumps(snapshot))
    assert len(members) == 1999 and 10_000 < size < 40_000  # ~ 0.1 % of a 256 x 224 px uint8 batch (38 MB)


def test_resume_re_reads_only_the_buffer_shards_and_the_current_one(shards, monkeypatch):
    reference = _take(_loader(shards, 0, shuffle_buffer=4), 12)
    state = _state_after(reference[:10])
    (reader,) = state["readers"]
    stream = sources.EpochShardStream(sorted(str(p) for p in shards.glob("*.tar")), seed=3)
    need = {o for o, _ in reader["buffer"]} | {reader["shard"]}
    opened = []
    real = sources.shard_samples
    monkeypatch.setattr(sources, "shard_samples", lambda shard, handler: opened.append(shard["url"]) or real(shard, handler))
    resumed = _loader(shards, 0, shuffle_buffer=4, position=state)
    _assert_same(_take(resumed, 2), reference[10:])
    want = [stream.shard_at(o, 0, 1)["url"] for o in sorted(need)]
    assert opened[:len(want)] == want and len(want) < reader["shard"] + 1  # not every shard before it


def test_jitter_draws_its_factors_and_order_from_the_generator_it_is_given():
    image = Image.open(io.BytesIO(_photo(np.random.default_rng(3), (40, 30))))
    jitter = train_transform(16, (1.0, 1.0), color_jitter=0.4)
    plain = train_transform(16, (1.0, 1.0)).crop_resize(image)
    outs = [jitter.crop_resize(image, rng=random.Random(s)) for s in range(40)]
    assert all(torch.equal(o, jitter.crop_resize(image, rng=random.Random(s))) for s, o in enumerate(outs))
    torch.manual_seed(0)  # torch's global generator plays no part
    assert torch.equal(outs[0], jitter.crop_resize(image, rng=random.Random(0)))
    from torchvision.transforms import functional as TF

    draws = random.Random(7)
    box = jitter.crop_box(40, 30, rng=draws)  # the crop box's draws come first
    base = jitter.resize_box(image, box)
    brightness_first, b, c = draws.random() < 0.5, draws.uniform(0.6, 1.4), draws.uniform(0.6, 1.4)
    want = (TF.adjust_contrast(TF.adjust_brightness(base, b), c) if brightness_first
            else TF.adjust_brightness(TF.adjust_contrast(base, c), b))
    assert torch.equal(outs[7], want)
    ratios = [o.float().mean().item() / plain.float().mean().item() for o in outs]
    assert 0.55 < min(ratios) < 0.9 and 1.1 < max(ratios) < 1.45  # brightness factors in [0.6, 1.4]


def test_pinning_a_batch_passes_its_position_through_unwalked(monkeypatch):
    from torch.utils.data._utils.pin_memory import pin_memory
    from vlp.data.pipeline import Batch

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: pinned.append(self.shape) or self.clone())
    position = {"buffer": [(0, i) for i in range(2000)], "rng": (3, tuple(range(625)), None)}
    batch = Batch(image=torch.zeros(2, 3, 4, 4, dtype=torch.uint8), text=torch.ones(2, 5), key=["a", "b"],
                  skipped={}, position=position)
    out = pin_memory(batch)
    assert type(out) is Batch and out["position"] is position and out["key"] == ["a", "b"]
    assert pinned == [(2, 3, 4, 4), (2, 5)]
    assert type(pickle.loads(pickle.dumps(out))) is Batch
