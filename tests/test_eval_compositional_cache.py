"""Every compositional format (our shards, ARO, SugarCrepe, Winoground) encodes through the one
encoder: a second run is served by the embedding cache (the model is never called, nor loaded)
and gives the same results; its images are encoded once however many choices share them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from eval.datasets.kinds import DatasetSpec
from eval.encoding.cache import EmbeddingCache
from eval.encoding.encoder import EncodeOptions, Encoder
from eval.encoding.source import ModelSource
from eval.run import run_tasks
from test_eval_cache import CountingModel
from test_eval_compositional import fake_loaded, make_aro_vg, make_sugarcrepe, make_winoground
from test_eval_datasets import make_compositional


def counting_loaded():
    loaded = fake_loaded()  # resizes: ARO crops differ in size
    loaded.model = CountingModel(loaded.model)
    return loaded


def _encoder(loaded, cache_dir: Path | None) -> Encoder:
    source = ModelSource("model-a", lambda: loaded, "fake")
    return Encoder(source, EmbeddingCache(cache_dir), options=EncodeOptions(batch_size=2, progress=False),
                   device="cpu")


def _formats(root: Path) -> list[DatasetSpec]:
    return [DatasetSpec("compositional", make_compositional(root / "comp")),
            DatasetSpec("aro", make_aro_vg(root / "aro")),
            DatasetSpec("sugarcrepe", make_sugarcrepe(root / "sugarcrepe")),
            DatasetSpec("winoground", make_winoground(root / "winoground"))]


def test_second_run_of_every_compositional_format_is_served_by_the_cache(tmp_path: Path) -> None:
    specs = _formats(tmp_path / "data")
    cold_loaded = counting_loaded()
    cold = run_tasks(_encoder(cold_loaded, tmp_path / "cache"), ["compositionality"], specs, None)
    assert [r["dataset"] for r in cold] == ["comp", "aro_vg_relation", "aro_vg_attribution", "sugarcrepe",
                                            "winoground"]
    assert cold_loaded.model.images > 0 and cold_loaded.model.texts > 0

    warm_loaded = counting_loaded()
    warm_encoder = _encoder(warm_loaded, tmp_path / "cache")
    warm = run_tasks(warm_encoder, ["compositionality"], specs, None)
    assert warm_loaded.model.images == 0 and warm_loaded.model.texts == 0
    assert not warm_encoder.source.is_loaded
    assert warm_encoder.cache.misses == 0 and warm_encoder.cache.hits > 0
    assert warm == cold

    uncached = run_tasks(_encoder(counting_loaded(), None), ["compositionality"], specs, None)
    assert uncached == cold
    assert cold[1]["metrics"]["micro_accuracy"] == pytest.approx(0.6)  # the numbers test_eval_compositional pins
    assert cold[3]["metrics"]["acc_swap_obj"] == 1.0 and cold[4]["metrics"]["group_score"] == pytest.approx(0.5)


@pytest.mark.parametrize("kind", ["aro", "sugarcrepe", "winoground", "compositional"])
def test_each_format_hits_the_cache_after_its_folder_moves(tmp_path: Path, kind: str) -> None:
    spec = next(s for s in _formats(tmp_path / "data") if s.kind == kind)
    cold = run_tasks(_encoder(counting_loaded(), tmp_path / "cache"), ["compositionality"], [spec], None)
    moved = tmp_path / "elsewhere" / spec.path.name
    shutil.copytree(spec.path, moved)
    loaded = counting_loaded()
    warm = run_tasks(_encoder(loaded, tmp_path / "cache"), ["compositionality"], [DatasetSpec(kind, moved)], None)
    assert loaded.model.images == 0 and loaded.model.texts == 0  # same bytes under another path
    assert warm == cold


def test_an_image_shared_by_many_choices_is_encoded_once(tmp_path: Path) -> None:
    root = make_sugarcrepe(tmp_path / "sugarcrepe")  # 2 image files behind 5 readable choices, 2 subsets
    loaded = counting_loaded()
    run_tasks(_encoder(loaded, None), ["compositionality"], [DatasetSpec("sugarcrepe", root)], None)
    assert loaded.model.images == 2


# ---------------------------------------------------------------- data parallel (2 gloo ranks)


def _run_formats(runtime, data: Path) -> dict:
    specs = [DatasetSpec(kind, data / name) for kind, name in
             (("compositional", "comp"), ("aro", "aro"), ("sugarcrepe", "sugarcrepe"), ("winoground", "winoground"))]
    encoder = Encoder(ModelSource("fake", counting_loaded, "fake"), EmbeddingCache(None), runtime,
                      EncodeOptions(batch_size=2, progress=False), device="cpu")
    results = run_tasks(encoder, ["compositionality"], specs, None)
    return {"results": results, "encoded": encoder.images_encoded}


def _dp_worker(rank: int, init_file: str, data: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from eval.encoding.parallel import EvalRuntime

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.save(_run_formats(EvalRuntime(rank=rank, world=2), Path(data)), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_split_every_compositional_format_and_equal_one_process(tmp_path: Path) -> None:
    import torch
    import torch.multiprocessing as mp

    from eval.encoding.parallel import EvalRuntime

    _formats(tmp_path / "data")
    single = _run_formats(EvalRuntime(), tmp_path / "data")
    mp.spawn(_dp_worker, args=(str(tmp_path / "init"), str(tmp_path / "data"), str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    for part in parts:
        assert part["results"] == single["results"]
    # each rank encodes its share of every set's images only (per set: ceil and floor of half)
    assert 0 < parts[1]["encoded"] <= parts[0]["encoded"] < single["encoded"]
    assert parts[0]["encoded"] + parts[1]["encoded"] == single["encoded"]
