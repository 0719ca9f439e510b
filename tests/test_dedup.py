"""``vlp-prep dedup``: faiss near-duplicate removal over a checkpoint's image embeddings, exact
and with the IVF index (planted near-duplicate groups: same duplicates, same keep rule)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep.__main__ import main as prep_main
from data_prep.dedup import near_duplicates, run_dedup
from data_prep.dedup_options import IndexOptions, plan_index
from data_prep.shard_writer import ShardWriter, read_tar_members
from tiny_arch import TINY_ARCH
from vlp.config import config_to_yaml, load_config
from vlp.models.dual_encoder import DualEncoder
from vlp.checkpoints import save_atomic


def _checkpoint(tmp_path: Path) -> Path:
    """A tiny-arch run directory. At random init every image embedding points mostly along one
    shared direction (cosine ~0.99 between unrelated images), which would make any threshold
    meaningless; zeroing the position/class embeddings and LayerNorm biases removes that shared
    part, so unrelated images land at cosine <= ~0.83 and planted near-duplicates at >= ~0.99."""
    cfg = load_config("configs/tiny.yaml")
    cfg.model.arch = TINY_ARCH
    torch.manual_seed(0)
    model = DualEncoder(TINY_ARCH)
    with torch.no_grad():
        visual = model.clip.visual
        visual.positional_embedding.zero_()
        visual.class_embedding.zero_()
        for module in visual.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.bias.zero_()
    run = tmp_path / "run"
    save_atomic({"model": model.state_dict(), "step": 1, "config": config_to_yaml(cfg)},
                run / "checkpoints" / "final.pt")
    return run


def _blocky(seed: int, brighten: int = 0) -> bytes:
    """An 8x8 random colour grid upscaled to 32 px, as PNG (optionally brightened)."""
    arr = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8).astype(int)
    image = Image.fromarray(np.clip(arr + brighten, 0, 255).astype(np.uint8)).resize((32, 32), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _shards(directory: Path) -> Path:
    """11 samples in 3 shards: k00..k07 distinct; k08 ~ k01 (brightened by 3); k09 == k04 (an
    exact copy); k10 holds bytes that are not an image."""
    images = [_blocky(s) for s in range(8)] + [_blocky(1, brighten=3), _blocky(4), b"not an image"]
    with ShardWriter(directory, "in-%03d.tar", max_count=4) as writer:
        for i, data in enumerate(images):
            writer.write({"__key__": f"k{i:02d}", "png": data, "txt": f"caption {i}"})
    return directory


def _members(directory: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for path in sorted(directory.glob("*.tar")):
        out.update(read_tar_members(path))
    return out


def test_dedup_removes_exactly_the_planted_near_duplicates(tmp_path: Path) -> None:
    shards, run = _shards(tmp_path / "shards"), _checkpoint(tmp_path)
    out = tmp_path / "dedup"
    code = prep_main(["dedup", "--shards", str(shards), "--model", str(run), "--threshold", "0.95",
                      "--output", str(out), "--shard-samples", "5", "--no-progress"])
    assert code == 0
    assert json.loads((out / "duplicates.json").read_text()) == {"k08": "k01", "k09": "k04"}
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["input_samples"], stats["samples_written"], stats["near_duplicates_removed"]) == (11, 8, 2)
    assert stats["skipped"] == {"unreadable_image": 1}
    assert stats["index"]["kind"] == "exact" and stats["index"]["embeddings"] == 10  # auto: exact when small
    assert json.loads((out / "sizes.json").read_text()) == {"shard-000000.tar": 5, "shard-000001.tar": 3}
    assert sorted(p.name for p in out.iterdir()) == ["duplicates.json", "shard-000000.tar", "shard-000001.tar",
                                                     "sizes.json", "stats.json"]  # the embedding spill is gone
    kept, original = _members(out), _members(shards)
    assert sorted({name.split(".")[0] for name in kept}) == [f"k{i:02d}" for i in range(8)]
    assert all(kept[name] == original[name] for name in kept)  # samples are copied unchanged


def test_threshold_controls_what_counts_as_a_duplicate(tmp_path: Path) -> None:
    shards, run = _shards(tmp_path / "shards"), _checkpoint(tmp_path)
    stats = run_dedup(shards, run, tmp_path / "strict", threshold=0.999, progress=False)
    assert json.loads((tmp_path / "strict" / "duplicates.json").read_text()) == {"k09": "k04"}
    assert stats["samples_written"] == 9
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_dedup(shards, run, tmp_path / "strict", threshold=0.999, progress=False)
    with pytest.raises(ValueError, match="threshold"):
        run_dedup(shards, run, tmp_path / "x", threshold=1.5, progress=False)


def test_near_duplicates_keeps_first_and_breaks_chains() -> None:
    # a ~ b (0.98), b ~ c (0.98), a vs c (0.92): b goes (duplicate of a), c stays because its only
    # near-duplicate b was removed, d duplicates c.
    def unit(deg: float) -> list[float]:
        return [np.cos(np.radians(deg)), np.sin(np.radians(deg))]

    emb = np.array([unit(0), unit(11), unit(22), unit(23), unit(90)], dtype=np.float32)
    assert near_duplicates(emb, 0.95) == {1: 0, 3: 2}
    assert near_duplicates(np.zeros((0, 2), np.float32), 0.95) == {}


def test_shard_size_is_the_same_option_as_shard_samples(tmp_path: Path) -> None:
    shards, run = _shards(tmp_path / "shards"), _checkpoint(tmp_path)
    for flag in ("--shard-samples", "--shard-size"):
        assert prep_main(["dedup", "--shards", str(shards), "--model", str(run), "--output", str(tmp_path / flag),
                          flag, "3", "--no-progress"]) == 0
    sizes = json.loads((tmp_path / "--shard-size" / "sizes.json").read_text())
    assert sizes == {"shard-000000.tar": 3, "shard-000001.tar": 3, "shard-000002.tar": 2}
    assert sizes == json.loads((tmp_path / "--shard-samples" / "sizes.json").read_text())
    assert _members(tmp_path / "--shard-size") == _members(tmp_path / "--shard-samples")


def test_a_shard_that_is_not_a_tar_is_named(tmp_path: Path, capsys) -> None:
    shards, run = _shards(tmp_path / "shards"), _checkpoint(tmp_path)
    (shards / "in-009.tar").write_bytes(b"not a tar" * 100)
    code = prep_main(["dedup", "--shards", str(shards), "--model", str(run), "--output", str(tmp_path / "out"),
                      "--no-progress"])
    assert code == 2 and f"{shards / 'in-009.tar'}: not a readable uncompressed tar shard" in capsys.readouterr().err


def test_dedup_cli_with_the_ivf_index_finds_the_same_duplicates(tmp_path: Path, capsys) -> None:
    shards, run = _shards(tmp_path / "shards"), _checkpoint(tmp_path)
    out = tmp_path / "ivf"
    assert prep_main(["dedup", "--shards", str(shards), "--model", str(run), "--output", str(out), "--index", "ivf",
                      "--nlist", "2", "--nprobe", "1", "--no-progress"]) == 0
    assert json.loads((out / "duplicates.json").read_text()) == {"k08": "k01", "k09": "k04"}
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["input_samples"], stats["samples_written"], stats["near_duplicates_removed"]) == (11, 8, 2)
    index = stats["index"]
    assert (index["kind"], index["nlist"], index["nprobe"], index["train_sample"]) == ("ivf-sq8", 2, 1, 10)
    assert index["bytes_per_embedding"] == index["dim"] + 8
    assert "ivf-sq8 search" in capsys.readouterr().out
    assert prep_main(["dedup", "--shards", str(shards), "--model", str(run), "--output", str(tmp_path / "x"),
                      "--nprobe", "0"]) == 2
    assert "--nprobe must be >= 1" in capsys.readouterr().err


def _planted(n_base: int = 2000, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Random unit vectors (unrelated pairs below cosine ~0.7) and, for every 4th, 1-3 noisy copies
    at cosine ~0.9-0.999 (so some pairs fall on each side of 0.95), rows shuffled."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n_base, dim)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    copies = [base[g] + rng.uniform(0.005, 0.05) * rng.standard_normal(dim).astype(np.float32)
              for g in range(0, n_base, 4) for _ in range(1 + g % 3)]
    emb = np.concatenate([base, np.array(copies, np.float32)])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return np.ascontiguousarray(emb[rng.permutation(len(emb))])


def _reference(emb: np.ndarray, threshold: float) -> dict[int, int]:
    """The keep rule by brute force: the first of each group stays, chains broken by removals."""
    sims = emb @ emb.T
    removed: dict[int, int] = {}
    for i in range(len(emb)):
        if i not in removed:
            for j in np.flatnonzero(sims[i] > threshold):
                if j > i and int(j) not in removed:
                    removed[int(j)] = i
    return removed


def test_ivf_finds_the_exact_near_duplicates_on_planted_groups() -> None:
    emb = _planted()
    exact = near_duplicates(emb, 0.95, IndexOptions(kind="exact"))
    assert exact == _reference(emb, 0.95) and len(exact) == 743
    nlist = plan_index(len(emb), emb.shape[1], IndexOptions(kind="ivf")).nlist
    assert nlist == round(4 * np.sqrt(len(emb))) == 219
    ivf = near_duplicates(emb, 0.95, IndexOptions(kind="ivf"))  # default nprobe 16 of 219 lists
    assert len(set(ivf) & set(exact)) / len(exact) >= 0.99
    for j, i in ivf.items():  # every pair reported is above the threshold and its keeper is kept
        assert i < j and i not in ivf and float(emb[i] @ emb[j]) > 0.95
    for codec in ("sq8", "flat"):  # every list searched: the exact result, keepers included
        assert near_duplicates(emb, 0.95, IndexOptions(kind="ivf", codec=codec, nprobe=nlist)) == exact
    few = near_duplicates(emb, 0.95, IndexOptions(kind="ivf", nprobe=1))
    assert len(set(few) & set(exact)) / len(exact) >= 0.98
    assert all(float(emb[i] @ emb[j]) > 0.95 for j, i in few.items())


def test_ivf_result_does_not_depend_on_batch_sizes() -> None:
    emb = _planted(600, seed=1)
    whole = near_duplicates(emb, 0.95, IndexOptions(kind="ivf", nprobe=4))
    small_batches = IndexOptions(kind="ivf", nprobe=4, add_batch=97, query_batch=13)
    assert whole and near_duplicates(emb, 0.95, small_batches) == whole


def test_ivf_keeps_first_and_breaks_chains() -> None:
    def unit(deg: float) -> list[float]:
        return [np.cos(np.radians(deg)), np.sin(np.radians(deg))]

    emb = np.array([unit(0), unit(11), unit(22), unit(23), unit(90)], dtype=np.float32)
    assert near_duplicates(emb, 0.95, IndexOptions(kind="ivf", nlist=2, nprobe=2)) == {1: 0, 3: 2}


def test_index_plan_switches_and_sizes() -> None:
    assert plan_index(50_000, 512, IndexOptions()).kind == "exact"
    plan = plan_index(10_000_000, 512, IndexOptions())
    assert (plan.kind, plan.nlist, plan.nprobe, plan.train_sample) == ("ivf-sq8", 12649, 16, 505_960)
    assert plan.bytes_per_embedding == 520 and plan.index_bytes == 10_000_000 * 520 + 4 * 512 * 12649  # ~5.2 GB
    assert plan_index(10_000_000, 512, IndexOptions(codec="flat")).bytes_per_embedding == 2056
    small = plan_index(1000, 64, IndexOptions(kind="ivf", nlist=0, train_sample=100))
    assert (small.nlist, small.train_sample) == (100, 100)  # never more lists than training points
    with pytest.raises(ValueError, match="--index must be one of auto, exact, ivf"):
        plan_index(10, 4, IndexOptions(kind="hnsw"))
