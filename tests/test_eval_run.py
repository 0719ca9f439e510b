"""``eval run``: the files it writes, its checks before any work, search backends, and one
encoding pass per dataset without a cache."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from test_eval_cache import _noise_folder, counting_loaded, make_dual_folder
from test_eval_datasets import make_zeroshot



def test_eval_run_writes_json_csv_markdown_and_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import sys
    import types

    from eval.__main__ import main

    loads: list[str] = []

    def load_eval_model(path, device="cpu", model_config=None, allow_mismatch=False):
        loads.append(path)
        loaded = counting_loaded()
        loaded.warnings = ["activation: undeclared"]
        return loaded

    monkeypatch.setitem(sys.modules, "vlp.interop.load", types.SimpleNamespace(load_eval_model=load_eval_model))
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    data = make_dual_folder(tmp_path / "dual")
    argv = ["run", "--model", str(ckpt), "--tasks", "zeroshot,retrieval,diagnostics", "--datasets",
            f"classification:{data},retrieval:{data}", "--output", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache"), "--batch-size", "2", "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["dual_diagnostics.json", "dual_retrieval.json", "dual_retrieval_top5.png",
                     "dual_similarity_histogram.png", "dual_zeroshot.json", "results.csv", "summary.md"]
    zs = json.loads((out / "dual_zeroshot.json").read_text())
    assert zs["metrics"]["acc1"] == 1.0 and math.isnan(zs["metrics"]["acc5"]) and zs["skipped"] == 1
    assert zs["model_warnings"] == ["activation: undeclared"]
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("dataset,model,task")
    assert "## zeroshot_classification" in (out / "summary.md").read_text()
    assert loads == [str(ckpt)]

    # warm: nothing is loaded, same numbers, warnings remembered
    shutil.rmtree(out)
    assert main(argv) == 0
    assert loads == [str(ckpt)]
    assert json.loads((out / "dual_zeroshot.json").read_text()) == zs

    # another checkpoint file (new bytes) is another model
    ckpt.write_bytes(b"other weights")
    assert main(argv) == 0
    assert loads == [str(ckpt), str(ckpt)]


def test_eval_run_rejects_unknown_task_and_missing_dataset(tmp_path: Path, capsys) -> None:
    from eval.__main__ import main

    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"x")
    base = ["run", "--model", str(ckpt), "--output", str(tmp_path / "o"), "--no-progress"]
    assert main([*base, "--tasks", "zeroshot,captions", "--datasets", str(tmp_path)]) == 2
    assert "unknown task(s) captions" in capsys.readouterr().err
    assert main([*base, "--tasks", "zeroshot", "--datasets", f"classification:{tmp_path / 'nope'}"]) == 2
    assert "dataset not found" in capsys.readouterr().err
    zs = make_zeroshot(tmp_path / "zs")  # a test split only
    assert main([*base, "--tasks", "zeroshot,linear_probe", "--datasets", str(zs)]) == 2
    assert "linear_probe needs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before any work or output
    assert main([*base, "--tasks", "retrieval", "--datasets", f"classification:{zs}"]) == 2
    assert "none of the requested tasks reads" in capsys.readouterr().err


def test_eval_run_faiss_and_torch_search_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from eval.__main__ import main

    monkeypatch.setitem(sys.modules, "vlp.interop.load",
                        types.SimpleNamespace(load_eval_model=lambda *a, **k: counting_loaded()))
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    data = _noise_folder(tmp_path / "noise")
    metrics = {}
    for backend in ("torch", "faiss-flat"):
        out = tmp_path / backend
        assert main(["run", "--model", str(ckpt), "--tasks", "retrieval", "--datasets", f"retrieval:{data}",
                     "--output", str(out), "--search", backend, "--no-cache", "--no-progress", "--grid-queries", "0",
                     "--device", "cpu"]) == 0
        metrics[backend] = json.loads((out / "noise_retrieval.json").read_text())["metrics"]
    assert metrics["torch"] == metrics["faiss-flat"]
    assert metrics["torch"]["image_retrieval_recall@10"] > 0


def test_eval_run_without_cache_encodes_each_image_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from eval.__main__ import main

    made = []

    def load_eval_model(*args, **kwargs):
        made.append(counting_loaded())
        return made[-1]

    monkeypatch.setitem(sys.modules, "vlp.interop.load", types.SimpleNamespace(load_eval_model=load_eval_model))
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    data = make_dual_folder(tmp_path / "dual")
    assert main(["run", "--model", str(ckpt), "--tasks", "retrieval,diagnostics", "--datasets", f"retrieval:{data}",
                 "--output", str(tmp_path / "out"), "--no-cache", "--no-progress", "--device", "cpu"]) == 0
    assert (tmp_path / "out" / "dual_retrieval_top5.png").is_file()
    assert len(made) == 1 and made[0].model.images == 3 and made[0].model.texts == 5  # grid and diagnostics reuse them


def test_output_names_are_distinct() -> None:
    from eval.run import DatasetSpec, output_names

    a, b, c = (DatasetSpec("retrieval", Path(p)) for p in ("x/coco/test", "y/flickr/test", "x/coco/val"))
    assert list(output_names([a, b, c]).values()) == ["coco-test", "flickr-test", "val"]
    d = DatasetSpec("classification", Path("x/coco/test"))  # another kind writes other task names
    assert output_names([a, d])[d] == "test" and output_names([a, d])[a] == "test"
