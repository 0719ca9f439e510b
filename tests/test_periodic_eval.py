"""``eval.training.evaluate_periodic``: the tasks of ``eval.every_tasks`` of the built-in suite on
a model in memory, the same numbers as the end-of-training suite's entries, as flat
``eval/<entry>/<metric>`` numbers; and the trainer's interface that finds it (``resolve_periodic``)."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.suite import builtin_selection, evaluate_builtin
from eval.training import check_every_tasks, evaluate_at_end, evaluate_periodic
from test_eval_training import count_encodes, tiny_model_and_config


def test_periodic_eval_gives_the_suites_numbers_for_its_tasks(shapes_dir: Path, tmp_path: Path, capsys) -> None:
    from vlp.interop.loaded import wrap_model

    root = shapes_dir / "eval"
    model, cfg = tiny_model_and_config(root, cache=False)
    reference = evaluate_builtin(wrap_model(model, cfg, name="m"), root, batch_size=3, progress=False)
    assert list(reference) == ["zeroshot", "retrieval", "compositional"]

    def seed_all() -> None:
        torch.manual_seed(123)
        random.seed(5)
        np.random.seed(7)

    def draws() -> tuple:
        return torch.rand(3).tolist(), random.random(), float(np.random.rand())

    seed_all()
    untouched = draws()
    seed_all()
    flat = evaluate_periodic(model, cfg, tmp_path, step=40)
    assert draws() == untouched  # the training run's generators are where they were

    assert model.training  # back in training mode
    want = {f"eval/{entry}/{key}": float(value)
            for entry in ("zeroshot", "retrieval") for key, value in reference[entry]["metrics"].items()}
    want.update({f"eval/{entry}/skipped": float(reference[entry]["skipped"]) for entry in ("zeroshot", "retrieval")})
    assert flat == want
    assert "eval/zeroshot/acc1" in flat and "eval/retrieval/image_retrieval_recall@1" in flat
    assert all(type(v) is float for v in flat.values())
    assert not any(k.startswith("eval/compositional/") for k in flat)
    assert list(tmp_path.iterdir()) == []  # no files
    out = capsys.readouterr().out
    assert out.startswith(f"eval at step 40: zeroshot/acc1 {flat['eval/zeroshot/acc1']:.4f}")


def test_periodic_eval_uses_no_cache_and_follows_the_weights(shapes_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VLP_CACHE_DIR", str(tmp_path / "cache"))
    root = shapes_dir / "eval"
    model, cfg = tiny_model_and_config(root, cache=True)  # eval.cache is for the final evaluation only
    cfg.eval.every_tasks = ["retrieval"]
    calls = count_encodes(model)
    first = evaluate_periodic(model, cfg, tmp_path, step=1)
    assert sorted({k.split("/")[1] for k in first}) == ["retrieval"]
    encoded = dict(calls)
    assert encoded["images"] > 0 and encoded["texts"] > 0
    again = evaluate_periodic(model, cfg, tmp_path, step=2)
    assert calls == {k: 2 * v for k, v in encoded.items()}  # encoded again: nothing cached
    assert again == first
    assert not (tmp_path / "cache").exists()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert evaluate_periodic(model, cfg, tmp_path, step=3) != first


def test_periodic_eval_matches_the_end_of_training_entries(shapes_dir: Path, tmp_path: Path) -> None:
    model, cfg = tiny_model_and_config(shapes_dir / "eval", cache=False)
    cfg.eval.every_tasks = ["zeroshot", "compositionality"]  # by family works too
    at_end = evaluate_at_end(model, cfg, tmp_path)
    flat = evaluate_periodic(model, cfg, tmp_path, step=9)
    assert flat["eval/zeroshot/acc1"] == at_end["zeroshot"]["metrics"]["acc1"]
    assert {k for k in flat if k.startswith("eval/compositional/")} == \
        {f"eval/compositional/{m}" for m in at_end["compositional"]["metrics"]} | {"eval/compositional/skipped"}
    assert not any(k.startswith("eval/retrieval/") for k in flat)
    assert json.loads((tmp_path / "eval_results.json").read_text())["zeroshot"]["metrics"]["acc1"] == \
        flat["eval/zeroshot/acc1"]


def test_unknown_every_task_names_the_choices(tmp_path: Path) -> None:
    model, cfg = tiny_model_and_config(tmp_path)
    cfg.eval.every, cfg.eval.every_tasks = 10, ["zeroshot", "retreival"]
    from vlp.errors import ConfigError
    from vlp.train.evaluation import check_periodic

    with pytest.raises(ConfigError, match=r"eval.every_tasks: unknown built-in eval task\(s\) retreival; choose "
                                          r"from zeroshot, retrieval, compositional, compositionality, captioning"):
        check_periodic(evaluate_periodic, cfg)  # what the trainer calls before any work
    check_periodic(None, cfg)
    check_periodic(lambda model, cfg, run_root, step: {}, cfg)  # a function without a check
    cfg.eval.every = 0
    check_every_tasks(cfg)  # off: nothing checked
    with pytest.raises(ValueError, match="captioning scores the retrieval folder"):
        builtin_selection(["captioning"])
    assert [t.name for t in builtin_selection(["retrieval", "captioning"])] == ["retrieval"]


def test_periodic_eval_skips_a_missing_root_with_a_warning(tmp_path: Path, caplog) -> None:
    model, cfg = tiny_model_and_config(tmp_path / "nowhere")
    with caplog.at_level(logging.WARNING):
        assert evaluate_periodic(model, cfg, tmp_path, step=7) == {}
    assert f"eval.builtin_root {tmp_path / 'nowhere'} not found; skipping the evaluation at step 7" in caplog.text
    model, cfg = tiny_model_and_config(None)
    assert evaluate_periodic(model, cfg, tmp_path, step=7) == {}
    assert model.training


def test_the_trainer_finds_the_installed_periodic_evaluation(caplog) -> None:
    from vlp.train import evaluation

    assert evaluation.resolve_periodic(evaluation.INSTALLED) is evaluate_periodic
    assert evaluation.resolve_periodic(None) is None

    def mine(model, cfg, run_root, step):
        return {}

    assert evaluation.resolve_periodic(mine) is mine
    with pytest.raises(TypeError, match="periodic evaluation must be a function, INSTALLED or None"):
        evaluation.resolve_periodic("eval")
    assert evaluation.resolve_evaluation(evaluation.INSTALLED) is evaluate_at_end


def test_no_installed_periodic_evaluation_warns(monkeypatch, caplog) -> None:
    from vlp.train import evaluation

    monkeypatch.setattr(evaluation, "entry_points", lambda **kwargs: [])
    with caplog.at_level(logging.WARNING):
        assert evaluation.resolve_periodic(evaluation.INSTALLED) is None
        assert evaluation.resolve_evaluation(evaluation.INSTALLED) is None
    assert "no periodic evaluation is installed (entry point vlp.evaluation:periodic" in caplog.text
    assert "eval.every is ignored" in caplog.text
    assert "no end-of-training evaluation is installed (entry point vlp.evaluation:at_end" in caplog.text
