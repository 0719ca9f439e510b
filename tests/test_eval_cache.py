"""Embedding cache, shared encodes across tasks, data-parallel eval and ``eval run``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eval.encoding.cache import DIGEST_MEMO, EmbeddingCache, digest_bytes
from eval.datasets.shards import ClassificationShards, RetrievalShards
from eval.encoding.encoder import EncodeOptions, Encoder
from eval.encoding.source import ModelSource
from eval.encoding.parallel import EvalRuntime, split_evenly
from eval.tasks.retrieval import retrieval_task
from eval.tasks.zeroshot import zeroshot_task
from test_eval_datasets import BLUE, GREEN, RED, fake_loaded, make_zeroshot, png, write_split


class CountingModel(torch.nn.Module):
    """Wraps a model and counts the images and texts it encodes."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.images = 0
        self.texts = 0

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        self.images += images.shape[0]
        return self.inner.encode_image(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        self.texts += tokens.shape[0]
        return self.inner.encode_text(tokens)


def counting_loaded():
    loaded = fake_loaded()
    loaded.model = CountingModel(loaded.model)
    return loaded


def encoder_for(loaded, cache_dir: Path | None, fingerprint: str = "model-a") -> Encoder:
    source = ModelSource(fingerprint, lambda: loaded, "fake")
    return Encoder(source, EmbeddingCache(cache_dir), options=EncodeOptions(batch_size=2, progress=False), device="cpu")


def make_dual_folder(root: Path) -> Path:
    """A folder both readers accept: samples with a label (.cls) and captions (.txt)."""
    root.mkdir(parents=True)
    (root / "classnames.txt").write_text("red\ngreen\nblue\n")
    (root / "zeroshot_classification_templates.txt").write_text("a {c} shape\n")
    write_split(root, [[
        {"__key__": "d0", "png": png(RED), "cls": b"0", "txt": b"a red square\na pinkish square"},
        {"__key__": "d1", "png": png(GREEN), "cls": b"1", "txt": b"a green circle"},
        {"__key__": "d2", "png": b"broken", "cls": b"2", "txt": b"a blue thing"},
        {"__key__": "d3", "png": png(BLUE), "cls": b"2", "txt": b"a blue triangle\na teal triangle"},
    ]])
    return root


def test_digest_is_length_prefixed() -> None:
    assert digest_bytes("ab", "c") != digest_bytes("a", "bc")
    assert digest_bytes("ab", "c") == digest_bytes("ab", "c")


def test_warm_run_encodes_nothing_and_gives_identical_results(tmp_path: Path) -> None:
    data = make_zeroshot(tmp_path / "zs")
    cold_loaded = counting_loaded()
    cold = zeroshot_task(encoder_for(cold_loaded, tmp_path / "cache"), ClassificationShards(data))
    assert cold_loaded.model.images == 5 and cold_loaded.model.texts == 6  # 5 good images, 3 classes x 2 templates

    warm_loaded = counting_loaded()
    warm_encoder = encoder_for(warm_loaded, tmp_path / "cache")
    warm = zeroshot_task(warm_encoder, ClassificationShards(data))
    assert warm_loaded.model.images == 0 and warm_loaded.model.texts == 0
    assert not warm_encoder.source.is_loaded  # a full hit never loads the model
    assert warm == cold
    assert cold["metrics"]["acc1"] == pytest.approx(0.8) and cold["skipped"] == 2  # corrupt image + missing .cls


def test_zeroshot_and_retrieval_over_one_folder_encode_images_once(tmp_path: Path) -> None:
    data = make_dual_folder(tmp_path / "dual")
    loaded = counting_loaded()
    encoder = encoder_for(loaded, tmp_path / "cache")
    zs = zeroshot_task(encoder, ClassificationShards(data))
    assert loaded.model.images == 3
    ret = retrieval_task(encoder, RetrievalShards(data))
    assert loaded.model.images == 3  # no image encoded twice
    assert zs["skipped"] == ret["skipped"] == 1  # the broken image, remembered by the cache
    assert ret["num_images"] == 3 and ret["num_texts"] == 5
    uncached = retrieval_task(encoder_for(counting_loaded(), None), RetrievalShards(data))
    assert ret["metrics"] == uncached["metrics"]


def test_changed_content_misses_and_moved_folder_hits(tmp_path: Path) -> None:
    data = make_zeroshot(tmp_path / "zs")
    zeroshot_task(encoder_for(counting_loaded(), tmp_path / "cache"), ClassificationShards(data))

    moved = tmp_path / "elsewhere" / "zs"
    shutil.copytree(data, moved)
    loaded = counting_loaded()
    zeroshot_task(encoder_for(loaded, tmp_path / "cache"), ClassificationShards(moved))
    assert loaded.model.images == 0  # same bytes under another path

    write_split(moved, [[{"__key__": "z0", "png": png(GREEN), "cls": b"1"}]])  # new content
    loaded = counting_loaded()
    result = zeroshot_task(encoder_for(loaded, tmp_path / "cache"), ClassificationShards(moved))
    assert loaded.model.images == 1 and result["metrics"]["acc1"] == 1.0

    loaded = counting_loaded()
    zeroshot_task(encoder_for(loaded, tmp_path / "cache", fingerprint="model-b"), ClassificationShards(data))
    assert loaded.model.images == 5  # another model never reads model-a's embeddings


def test_damaged_cache_entry_is_a_miss(tmp_path: Path) -> None:
    data = make_zeroshot(tmp_path / "zs")
    cold = zeroshot_task(encoder_for(counting_loaded(), tmp_path / "cache"), ClassificationShards(data))
    for entry in (tmp_path / "cache").rglob("*.pt"):
        entry.write_bytes(b"not a torch file")
    loaded = counting_loaded()
    again = zeroshot_task(encoder_for(loaded, tmp_path / "cache"), ClassificationShards(data))
    assert loaded.model.images == 5 and again == cold


def test_file_digests_are_memoised_by_size_and_mtime(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 10)
    cache = EmbeddingCache(tmp_path / "cache")
    first = cache.file_digest(f)
    cache.flush_digests()
    memo = json.loads((tmp_path / "cache" / DIGEST_MEMO).read_text())
    assert memo[str(f.resolve())][2] == first
    f.write_bytes(b"y" * 11)
    assert EmbeddingCache(tmp_path / "cache").file_digest(f) != first


def test_in_memory_fingerprint_follows_weights() -> None:
    from eval.encoding.cache import model_fingerprint

    a, b = fake_loaded(), fake_loaded()
    assert model_fingerprint(a) == model_fingerprint(b)
    b.model.table[0, 0] += 1e-6
    assert model_fingerprint(a) != model_fingerprint(b)


def test_split_evenly_covers_range_once() -> None:
    for n in range(0, 9):
        for world in (1, 2, 3):
            covered = [i for r in range(world) for i in range(n)[split_evenly(n, world, r)]]
            assert covered == list(range(n))


# ---------------------------------------------------------------- data parallel (2 gloo ranks)


def _noise_folder(root: Path, n: int = 11) -> Path:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "classnames.txt").write_text("cat\ndog\nbird\nfish\nfrog\nbee\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\nan image of a {c}\n")
    samples = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(buf, format="PNG")
        samples.append({"__key__": f"s{i:02d}", "png": buf.getvalue(), "cls": str(i % 6).encode(),
                        "txt": f"a photo of a {['cat', 'dog', 'bird'][i % 3]} number {i}\nthing {i}".encode()})
    write_split(root, [samples[:5], samples[5:]])
    return root


def _tiny_loaded():
    from tiny_arch import TINY_ARCH
    from vlp.config import Config
    from vlp.models.dual_encoder import DualEncoder
    from vlp.interop.loaded import wrap_model

    arch = {**TINY_ARCH, "text_cfg": {**TINY_ARCH["text_cfg"], "vocab_size": 49408, "context_length": 16}}
    torch.manual_seed(0)
    model = DualEncoder(arch).eval()
    cfg = Config()
    return wrap_model(model, cfg, name="tiny")


def _run_all(runtime: EvalRuntime, data: Path, out: Path, cache: Path | None) -> dict:
    from eval.run import DatasetSpec, RunOptions, run_tasks

    encoder = Encoder(ModelSource("tiny", _tiny_loaded, "tiny"), EmbeddingCache(cache), runtime,
                      EncodeOptions(batch_size=3, progress=False), device="cpu")
    results = run_tasks(encoder, ["zeroshot", "retrieval"],
                        [DatasetSpec("classification", data), DatasetSpec("retrieval", data)], out,
                        RunOptions(grid_queries=0))
    images = encoder.images(ClassificationShards(data))
    return {"metrics": [r["metrics"] for r in results], "keys": [r.key for r in images.records],
            "emb": images.embeddings, "encoded": encoder.images_encoded}


def _dp_worker(rank: int, init_file: str, data: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        result = _run_all(EvalRuntime(rank=rank, world=2), Path(data), Path(out) / "dp", None)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    data = _noise_folder(tmp_path / "noise")
    single = _run_all(EvalRuntime(), data, tmp_path / "single", None)
    mp.spawn(_dp_worker, args=(str(tmp_path / "init"), str(data), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        dp = torch.load(tmp_path / f"rank{rank}.pt")
        assert dp["keys"] == single["keys"] == [f"s{i:02d}" for i in range(11)]
        torch.testing.assert_close(dp["emb"], single["emb"], rtol=0, atol=1e-6)
        assert dp["metrics"] == single["metrics"]
        assert dp["encoded"] == 3 * (6 if rank == 0 else 5)  # 3 passes (no cache), each over its part only
    assert single["encoded"] == 3 * 11
    assert (tmp_path / "dp" / "results.csv").is_file()  # rank 0 wrote the reports


def test_repeated_keys_keep_their_own_embeddings(tmp_path: Path) -> None:
    root = tmp_path / "restart"
    root.mkdir()
    (root / "classnames.txt").write_text("red\ngreen\nblue\n")
    (root / "zeroshot_classification_templates.txt").write_text("a {c} shape\n")
    write_split(root, [  # keys restart in every shard, as some exporters write them
        [{"__key__": "k0", "png": png(RED), "cls": b"0"}, {"__key__": "k1", "png": png(GREEN), "cls": b"1"}],
        [{"__key__": "k0", "png": png(BLUE), "cls": b"2"}, {"__key__": "k1", "png": png(RED), "cls": b"0"}],
    ])
    for cache in (None, tmp_path / "cache", tmp_path / "cache"):  # uncached, cold, warm
        result = zeroshot_task(encoder_for(counting_loaded(), cache), ClassificationShards(root))
        assert result["metrics"]["acc1"] == 1.0 and result["num_samples"] == 4


def test_background_load_is_the_one_load_and_reraises_its_error() -> None:
    import threading

    calls, release = [], threading.Event()
    loaded = fake_loaded()

    def load():
        calls.append(threading.current_thread().name)
        release.wait(5)
        return loaded

    source = ModelSource("fp", load, "fake")
    source.start_loading()
    source.start_loading()  # a second call neither loads again nor waits
    assert not source.is_loaded
    release.set()
    assert source.loaded is loaded and source.loaded is loaded
    assert len(calls) == 1 and calls[0] != threading.current_thread().name

    def broken():
        raise ValueError("no weights here")

    failing = ModelSource("fp", broken, "broken")
    failing.start_loading()
    with pytest.raises(ValueError, match="no weights here"):
        failing.loaded  # the error surfaces where the model is needed, in the caller's thread


def test_cold_model_files_load_while_hashing_and_warm_ones_never_load(tmp_path: Path, monkeypatch) -> None:
    import eval.encoding.source as run_module

    weights = tmp_path / "model.pt"
    weights.write_bytes(b"w" * 1000)
    loads = []
    monkeypatch.setattr(run_module, "model_files", lambda path: [Path(path)])
    monkeypatch.setattr("vlp.interop.load.load_eval_model", lambda *a, **k: loads.append(1) or fake_loaded())
    cache = EmbeddingCache(tmp_path / "cache")
    cold = run_module.model_source(weights, cache)
    fingerprint = cold.fingerprint  # the file was never hashed here: the load starts with the hash
    assert cold.load_started
    assert cold.loaded is not None and loads == [1]
    cache.flush_digests()
    warm = run_module.model_source(weights, EmbeddingCache(tmp_path / "cache"))
    assert warm.fingerprint == fingerprint
    assert not warm.load_started and loads == [1]
