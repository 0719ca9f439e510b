"""Who reads what: exact-once epochs over ranks x workers, resampled streams, reader-count checks."""

import collections
import itertools
import warnings

import pytest

from test_data_pipeline import _good, _write_shards
from vlp.config import ConfigError
from vlp.data.pipeline import build_train_loader
from vlp.data.shards import ShardSource
from vlp.data.sources import ResampledShardStream
from vlp.data.tokenizers import build_tokenizer
from vlp.data.transforms import train_transform

TOK = build_tokenizer("open_clip", 8)


def _shards(root, sizes, prefix="s"):
    shards = [[_good(f"{prefix}{i}_{j}", caption=f"shard {i} sample {j}") for j in range(n)] for i, n in enumerate(sizes)]
    _write_shards(root, shards)
    return sorted(s["__key__"] for shard in shards for s in shard)


def _keys(loader):
    return [k for batch in loader for k in batch["key"]]


def test_two_ranks_two_workers_see_every_sample_once_per_epoch(tmp_path):
    all_keys = _shards(tmp_path, [5, 3, 4, 6, 2, 5])  # 25 samples, 6 shards over 4 readers: uneven
    seen = collections.Counter()
    for rank in range(2):
        with pytest.warns(UserWarning, match="6 shards do not split evenly over 4 readers"):
            loader = build_train_loader(str(tmp_path), batch_size=4, transform=train_transform(16), tokenizer=TOK,
                                        workers=2, shuffle_buffer=8, seed=5, rank=rank, world_size=2, epochs=2)
        keys = _keys(loader)
        assert len(keys) > 0
        seen.update(keys)
    assert sorted(seen) == all_keys
    assert set(seen.values()) == {2}  # two epochs: every sample exactly twice, none lost, none repeated


def test_each_epoch_alone_is_exact_once_and_ranks_are_disjoint(tmp_path):
    all_keys = _shards(tmp_path, [3] * 8)
    per_rank = []
    for rank in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # 8 shards over 2 x 2 readers split evenly: no warning
            loader = build_train_loader(str(tmp_path), batch_size=5, transform=train_transform(16), tokenizer=TOK,
                                        workers=2, shuffle_buffer=0, seed=1, rank=rank, world_size=2, epochs=1)
        per_rank.append(_keys(loader))
    assert len(per_rank[0]) == len(per_rank[1]) == 12
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == all_keys


def test_fewer_shards_than_readers(tmp_path):
    _shards(tmp_path, [4, 4, 4])
    with pytest.raises(ConfigError, match=r"3 shard\(s\) for 2 rank\(s\) x 2 worker\(s\).*data.resampled=true"):
        build_train_loader(str(tmp_path), 2, train_transform(16), TOK, workers=2, world_size=2)
    with pytest.warns(UserWarning, match=r"3 shard\(s\) for 4 rank\(s\) x 1 worker\(s\).*resampled mode"):
        loader = build_train_loader(str(tmp_path), 2, train_transform(16), TOK, workers=0, world_size=4,
                                    resampled=True, shuffle_buffer=0)
    batches = list(itertools.islice(iter(loader), 10))  # endless: 20 samples from 12 means repeats
    keys = [k for b in batches for k in b["key"]]
    assert len(keys) == 20 and len(set(keys)) < 20


def test_resampled_stream_is_seeded_per_rank_and_mixes_by_weight():
    a = ShardSource(("a0", "a1"), weight=3.0)
    b = ShardSource(("b0", "b1"), weight=1.0)
    draw = lambda seed, rank: [d["url"] for d in itertools.islice(iter(ResampledShardStream([a, b], seed, rank)), 4000)]
    rank0 = draw(7, 0)
    assert rank0 == draw(7, 0)  # reproducible
    assert rank0 != draw(7, 1) and rank0 != draw(8, 0)  # independent per rank and seed
    share_a = sum(u.startswith("a") for u in rank0) / len(rank0)
    assert 0.72 < share_a < 0.78  # weight 3:1
    counts = collections.Counter(rank0)
    assert abs(counts["a0"] - counts["a1"]) < 200 and abs(counts["b0"] - counts["b1"]) < 150


def test_epoch_mode_refuses_unequal_weights(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    _shards(tmp_path / "x", [2, 2], prefix="x")
    _shards(tmp_path / "y", [2, 2], prefix="y")
    sources = [{"shards": str(tmp_path / "x"), "weight": 2}, {"shards": str(tmp_path / "y"), "weight": 1}]
    with pytest.raises(ConfigError, match="different weights need data.resampled=true"):
        build_train_loader(sources, 2, train_transform(16), TOK, workers=0)
    loader = build_train_loader(sources, 2, train_transform(16), TOK, workers=0, resampled=True, shuffle_buffer=0)
    keys = [k for b in itertools.islice(iter(loader), 150) for k in b["key"]]
    share_x = sum(k.startswith("x") for k in keys) / len(keys)
    assert len(keys) == 300 and 0.55 < share_x < 0.8  # weight 2:1 -> 2/3 (150 shard draws)
