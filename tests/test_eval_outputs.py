"""What ``eval run`` and ``eval builtin`` write, and how they name it (issue 10, items 6 and 7).

* Output files are named ``<dataset>_<task>.json`` with the task name typed in ``--tasks``; the
  JSON's ``task`` field stays CLIP_benchmark's (``zeroshot_classification``, ...).
* The retrieval JSON records the search backend that ran (and its parameters), per direction.
* ``eval builtin --output-dir D`` writes what ``eval run --output D`` writes for the same tasks
  and datasets, through the embedding cache.
* Error messages name the CLI flag (``--allow-mismatch``), not the Python keyword.
"""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from test_eval_cache import _noise_folder, counting_loaded, make_dual_folder
from test_eval_datasets import GREEN, RED, fake_loaded, make_compositional, make_retrieval, make_zeroshot


@pytest.fixture()
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A checkpoint path whose load gives a counting fake model; ``loads`` lists the models built."""
    loads: list[Any] = []

    def load_eval_model(path, device="cpu", model_config=None, allow_mismatch=False):
        loaded = counting_loaded()
        loads.append(loaded)
        return loaded

    monkeypatch.setitem(sys.modules, "vlp.interop.load", types.SimpleNamespace(load_eval_model=load_eval_model))
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    return {"ckpt": ckpt, "loads": loads}


def _main(*argv: str) -> int:
    from eval.__main__ import main

    return main([*argv, "--no-progress", "--device", "cpu"])


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# ---------------------------------------------------------------- file names


def test_run_names_each_file_after_the_task_typed(tmp_path: Path, fake_model: dict[str, Any]) -> None:
    dual = make_dual_folder(tmp_path / "dual")
    comp = make_compositional(tmp_path / "comp")
    out = tmp_path / "out"
    tasks = ["zeroshot", "retrieval", "diagnostics", "compositionality"]
    assert _main("run", "--model", str(fake_model["ckpt"]), "--tasks", ",".join(tasks), "--datasets",
                 f"classification:{dual},retrieval:{dual},{comp}", "--output", str(out), "--no-cache") == 0
    jsons = sorted(p.name for p in out.glob("*.json"))
    assert jsons == ["comp_compositionality.json", "dual_diagnostics.json", "dual_retrieval.json", "dual_zeroshot.json"]
    for task in tasks:  # the file of every task typed is found by that name
        assert len(list(out.glob(f"*_{task}.json"))) == 1
    # inside, the task stays CLIP_benchmark's name (its `build` and result tables group by it)
    assert _json(out / "dual_zeroshot.json")["task"] == "zeroshot_classification"
    assert _json(out / "dual_retrieval.json")["task"] == "zeroshot_retrieval"
    assert _json(out / "comp_compositionality.json")["task"] == "image_caption_selection"
    assert _json(out / "dual_zeroshot.json")["metrics"]["acc1"] == 1.0
    # results.csv: one row per JSON, each pointing at its file; summary.md groups by the JSON task
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["path"]).name for r in rows) == jsons
    assert {r["task"] for r in rows} == {"zeroshot_classification", "zeroshot_retrieval", "embedding_diagnostics",
                                         "image_caption_selection"}
    for row in rows:
        assert _json(Path(row["path"]))["task"] == row["task"]
    summary = (out / "summary.md").read_text()
    assert "## zeroshot_classification" in summary and "## image_caption_selection" in summary


def test_two_compositional_sets_of_one_name_keep_two_files(tmp_path: Path, fake_model: dict[str, Any]) -> None:
    first = make_compositional(tmp_path / "a" / "comp")
    second = make_compositional(tmp_path / "b" / "comp")
    out = tmp_path / "out"
    assert _main("run", "--model", str(fake_model["ckpt"]), "--tasks", "compositionality", "--datasets",
                 f"{first},{second}", "--output", str(out), "--no-cache") == 0
    names = sorted(p.name for p in out.glob("*.json"))
    assert names == ["a-comp_compositionality.json", "b-comp_compositionality.json"]


# ---------------------------------------------------------------- search backend in the retrieval JSON


def _retrieval_json(tmp_path: Path, ckpt: Path, data: Path, search: str) -> dict[str, Any]:
    out = tmp_path / f"out-{search}"
    assert _main("run", "--model", str(ckpt), "--tasks", "retrieval", "--datasets", f"retrieval:{data}",
                 "--output", str(out), "--search", search, "--no-cache", "--grid-queries", "0") == 0
    return _json(out / f"{data.name}_retrieval.json")


def test_retrieval_json_records_the_search_backend_that_ran(tmp_path: Path, fake_model: dict[str, Any],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import eval.encoding.search as search

    data = _noise_folder(tmp_path / "noise")  # 11 images, 22 captions
    ran: list[tuple[str, int]] = []
    torch_topk, faiss_topk = search.topk_torch, search.topk_faiss

    def spy_torch(queries, gallery, k, chunk=None):
        ran.append(("torch", gallery.shape[0]))
        return torch_topk(queries, gallery, k, chunk=chunk)

    def spy_faiss(queries, gallery, k, index="flat", nlist=None, nprobe=None):
        ran.append((f"faiss-{index}", gallery.shape[0]))
        return faiss_topk(queries, gallery, k, index=index, nlist=nlist, nprobe=nprobe)

    monkeypatch.setattr(search, "topk_torch", spy_torch)
    monkeypatch.setattr(search, "topk_faiss", spy_faiss)

    auto = _retrieval_json(tmp_path, fake_model["ckpt"], data, "auto")
    assert auto["search"] == {"requested": "auto",
                              "image_retrieval": {"backend": "torch", "gallery": 11, "exact": True},
                              "text_retrieval": {"backend": "torch", "gallery": 22, "exact": True}}
    assert sorted(ran) == [("torch", 11), ("torch", 22)]

    ran.clear()  # the auto rule with a lower threshold: texts (22) over it go to faiss, images (11) stay on torch
    monkeypatch.setattr(search, "FLAT_THRESHOLD", 15)
    split = _retrieval_json(tmp_path, fake_model["ckpt"], data, "auto")
    assert split["search"]["image_retrieval"] == {"backend": "torch", "gallery": 11, "exact": True}
    assert split["search"]["text_retrieval"] == {"backend": "faiss-flat", "gallery": 22, "exact": True}
    assert sorted(ran) == [("faiss-flat", 22), ("torch", 11)]
    assert split["metrics"] == auto["metrics"]

    ran.clear()
    ivf = _retrieval_json(tmp_path, fake_model["ckpt"], data, "faiss-ivf")
    # default_nlist(n) = max(1, min(4 sqrt(n), n // 39)) = 1 here; nprobe = min(nlist, 32): every list probed
    assert ivf["search"] == {"requested": "faiss-ivf",
                             "image_retrieval": {"backend": "faiss-ivf", "gallery": 11, "nlist": 1, "nprobe": 1,
                                                 "exact": True},
                             "text_retrieval": {"backend": "faiss-ivf", "gallery": 22, "nlist": 1, "nprobe": 1,
                                                "exact": True}}
    assert sorted(ran) == [("faiss-ivf", 11), ("faiss-ivf", 22)]


def test_search_plan_matches_the_auto_rule() -> None:
    from eval.encoding.search import DEFAULT_NPROBE, FLAT_THRESHOLD, IVF_THRESHOLD, default_nlist, search_plan

    assert search_plan("auto", FLAT_THRESHOLD) == {"backend": "torch", "gallery": FLAT_THRESHOLD, "exact": True}
    assert search_plan("auto", FLAT_THRESHOLD + 1)["backend"] == "faiss-flat"
    big = search_plan("auto", IVF_THRESHOLD + 1)
    nlist = default_nlist(IVF_THRESHOLD + 1)
    assert nlist == 4000  # 4 sqrt(1e6)
    assert big == {"backend": "faiss-ivf", "gallery": IVF_THRESHOLD + 1, "nlist": nlist, "nprobe": DEFAULT_NPROBE,
                   "exact": False}
    assert search_plan("faiss-ivf", 1000, nlist=4, nprobe=4)["exact"] is True
    with pytest.raises(ValueError, match="unknown search backend"):
        search_plan("annoy", 10)


# ---------------------------------------------------------------- eval builtin = eval run on the three sets


def make_builtin_root(root: Path) -> Path:
    make_zeroshot(root / "zeroshot")
    make_retrieval(root / "retrieval")
    make_compositional(root / "compositional")
    return root


def _comparable(out: Path) -> dict[str, Any]:
    """Every file under ``out`` (folder name taken out of the text), JSON parsed, PNG as bytes."""
    files: dict[str, Any] = {}
    for path in sorted(out.iterdir()):
        if path.suffix == ".png":
            files[path.name] = path.read_bytes()
        else:  # JSON parsed (the retrieval JSON names its PNG under ``out``)
            text = path.read_text().replace(str(out), "OUT")
            files[path.name] = json.loads(text) if path.suffix == ".json" else text
    return files


def test_builtin_writes_what_run_writes(tmp_path: Path, fake_model: dict[str, Any]) -> None:
    root = make_builtin_root(tmp_path / "bench")
    ckpt = str(fake_model["ckpt"])
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert _main("builtin", "--model", ckpt, "--root", str(root), "--output-dir", str(tmp_path / "b"), *cache) == 0
    assert _main("run", "--model", ckpt, "--tasks", "zeroshot,retrieval,compositionality", "--datasets",
                 f"{root / 'zeroshot'},{root / 'retrieval'},{root / 'compositional'}", "--output",
                 str(tmp_path / "r"), "--no-cache") == 0
    builtin, run = _comparable(tmp_path / "b"), _comparable(tmp_path / "r")
    assert sorted(builtin) == ["compositional_compositionality.json", "results.csv", "retrieval_retrieval.json",
                               "retrieval_retrieval_top5.png", "summary.md", "zeroshot_zeroshot.json"]
    assert builtin == run
    assert builtin["retrieval_retrieval.json"]["metrics"]["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert builtin["zeroshot_zeroshot.json"]["metrics"]["acc1"] == pytest.approx(0.8)

    # through the embedding cache, compositional set included: a second builtin run finds every
    # embedding there, so it never even loads the model
    loads = len(fake_model["loads"])
    assert _main("builtin", "--model", ckpt, "--root", str(root), "--output", str(tmp_path / "b2"), *cache) == 0
    assert len(fake_model["loads"]) == loads
    assert _comparable(tmp_path / "b2") == builtin


def test_evaluate_builtin_keeps_the_engine_api(tmp_path: Path) -> None:
    """``vlp.train.engine.final_evaluation`` calls ``evaluate_builtin(loaded, root, batch_size=...)``
    and ``format_table``: entry names stay, results equal the CLI's, nothing is written."""
    from eval.suite import evaluate_builtin, format_table

    root = make_builtin_root(tmp_path / "bench")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    results = evaluate_builtin(fake_loaded(), root, batch_size=4, progress=False)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert list(results) == ["zeroshot", "retrieval", "compositional"]
    assert results["zeroshot"]["task"] == "zeroshot_classification" and results["zeroshot"]["dataset"] == "zeroshot"
    assert results["zeroshot"]["metrics"]["acc1"] == pytest.approx(0.8)
    assert results["retrieval"]["search"]["image_retrieval"]["backend"] == "torch"
    assert results["compositional"]["metrics"]["acc"] == pytest.approx(1 / 3)
    assert "path" not in results["zeroshot"]
    assert "image_retrieval_recall@1" in format_table(results)


# ---------------------------------------------------------------- messages name the CLI flag


def test_mismatch_message_names_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from vlp.errors import ModelMismatchError

    message = str(ModelMismatchError("ckpt.pt", ["activation: GELU vs QuickGELU"]))
    assert "--allow-mismatch" in message and "allow_mismatch=" not in message

    def load_eval_model(*args, **kwargs):
        raise ModelMismatchError(args[0], ["activation: GELU vs QuickGELU"])

    monkeypatch.setitem(sys.modules, "vlp.interop.load", types.SimpleNamespace(load_eval_model=load_eval_model))
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"x")
    data = make_zeroshot(tmp_path / "zs")
    assert _main("zeroshot", "--model", str(ckpt), "--dataset", str(data), "--output", str(tmp_path / "o.json"),
                 "--no-cache") == 2
    err = capsys.readouterr().err
    assert "activation: GELU vs QuickGELU" in err
    assert err.count("--allow-mismatch") == 1 and "allow_mismatch" not in err


def test_run_reads_a_karpathy_json_with_its_images_beside_it(tmp_path: Path, fake_model: dict[str, Any],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The README's layout: the JSON in the folder its image paths start from. No CLI flag can
    give an image root, so ``eval run`` must not ask for the Python keyword ``image_root=``."""
    root = tmp_path / "coco"
    (root / "val2014").mkdir(parents=True)
    Image.new("RGB", (8, 8), RED).save(root / "val2014" / "a.png")
    Image.new("RGB", (8, 8), GREEN).save(root / "val2014" / "b.png")
    images = [{"filepath": "val2014", "filename": name, "split": "test", "sentences": [{"raw": caption}]}
              for name, caption in (("a.png", "a red square"), ("b.png", "a green square"))]
    (root / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": images}))
    out = tmp_path / "out"
    rc = _main("run", "--model", str(fake_model["ckpt"]), "--tasks", "retrieval", "--datasets",
               str(root / "dataset_coco.json"), "--output", str(out), "--no-cache", "--grid-queries", "0")
    assert "image_root" not in capsys.readouterr().err
    assert rc == 0
    result = _json(out / "dataset_coco_retrieval.json")
    assert result["num_images"] == 2 and result["metrics"]["image_retrieval_recall@1"] == 1.0
