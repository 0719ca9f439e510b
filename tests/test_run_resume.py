"""Run directories: a run is resumed only by a config that trains the same thing, never past its
target, and a refused or restarted run keeps every file of the old one."""

import json
import shutil

import pytest
import torch

from vlp.config import load_config
from vlp.train import cli, engine
from vlp.train.checkpoint import load_checkpoint

SMALL = [
    "model.arch.vision_cfg.image_size=32", "model.arch.vision_cfg.width=32", "model.arch.vision_cfg.head_width=16",
    "model.arch.vision_cfg.layers=1", "model.arch.text_cfg.width=32", "model.arch.text_cfg.layers=1",
    "model.arch.embed_dim=16", "train.batch_size=8", "train.log_every=1", "optim.warmup_steps=1",
    "data.shuffle_buffer=0", "data.workers=0", "eval.at_end=false",
]


def _args(shapes_dir, tmp_path, *extra):
    return [f"data.train_shards={shapes_dir}/train", f"train.output_dir={tmp_path}", *SMALL, *extra]


def _cfg(shapes_dir, tmp_path, *extra):
    return load_config("configs/tiny.yaml", _args(shapes_dir, tmp_path, *extra))


def _files(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_recipes_pin_no_run_name_and_the_default_name_comes_from_the_recipe_and_time(shapes_dir, tmp_path):
    for recipe in ("configs/tiny.yaml", "configs/siglip_tiny.yaml"):
        assert load_config(recipe).train.run_name is None, recipe
    first = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=1"), recipe="tiny")
    second = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=1", "train.batch_size=4"), recipe="tiny")
    assert first != second  # a second run never lands in (or resumes) the first one's directory
    assert first.name.startswith("tiny-") and second.name.startswith("tiny-")
    assert load_checkpoint(first / "checkpoints/final.pt")["samples_seen"] == 8
    assert load_checkpoint(second / "checkpoints/final.pt")["samples_seen"] == 4


def test_resume_with_other_data_batch_or_loss_stops_before_any_work(shapes_dir, tmp_path, capsys):
    run = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=2", "train.run_name=r"))
    before = _files(run)
    code = cli.main(["--config", "configs/tiny.yaml", *_args(shapes_dir, tmp_path, "train.steps=4", "train.run_name=r",
                                                             "train.batch_size=4", "loss.terms.0.weight=0.5",
                                                             "data.shuffle_buffer=16")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for line in ("train.batch_size: 8 -> 4", "loss.terms[0].weight: 1.0 -> 0.5", "data.shuffle_buffer: 0 -> 16"):
        assert line in err, err
    assert "train.steps" not in err  # extending the run is not a difference
    assert "a new train.run_name" in err or "new train.run_name" in err
    assert "train.resume=false" in err
    assert _files(run) == before  # config.yaml, checkpoints and metrics untouched


def test_changed_architecture_is_named_not_a_load_state_dict_traceback(shapes_dir, tmp_path, capsys):
    run = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=2", "train.run_name=arch"))
    before = _files(run)
    code = cli.main(["--config", "configs/tiny.yaml",
                     *_args(shapes_dir, tmp_path, "train.steps=4", "train.run_name=arch", "model.arch.text_cfg.layers=2")])
    err = capsys.readouterr().err
    assert code == 2 and "model.arch.text_cfg.layers: 1 -> 2" in err and "load_state_dict" not in err
    assert _files(run) == before  # the old config.yaml was not overwritten


def test_logging_and_length_knobs_may_change_on_resume(shapes_dir, tmp_path):
    run = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=2", "train.run_name=ext"))
    engine.train(_cfg(shapes_dir, tmp_path, "train.steps=3", "train.run_name=ext", "train.log_every=3",
                      "train.checkpoint_every=7", "eval.batch_size=5", "data.workers=1"))
    state = load_checkpoint(run / "checkpoints/final.pt")
    assert state["step"] == 3 and state["samples_seen"] == 24 and state["world_size"] == 1
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_copied_run_resumed_past_its_target_stops_and_records_the_step_reached(shapes_dir, tmp_path, capsys):
    run = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=4", "train.run_name=orig"))
    copy = tmp_path / "c"
    shutil.copytree(run, copy)
    before = _files(copy)
    code = cli.main(["--config", "configs/tiny.yaml", *_args(shapes_dir, tmp_path, "train.steps=2", "train.run_name=c")])
    err = capsys.readouterr().err
    assert code == 2 and "already at step 4, past train.steps=2" in err
    assert _files(copy) == before
    # the same target as reached: nothing to train, nothing rewritten
    engine.train(_cfg(shapes_dir, tmp_path, "train.steps=4", "train.run_name=c"))
    assert _files(copy) == before
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == load_checkpoint(run / "checkpoints/final.pt")["step"] == 4


def test_starting_over_keeps_the_old_run_aside(shapes_dir, tmp_path, capsys):
    run = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=2", "train.run_name=over"))
    old = _files(run)
    engine.train(_cfg(shapes_dir, tmp_path, "train.steps=1", "train.run_name=over", "train.resume=false",
                      "train.batch_size=4"))
    assert "its files were moved to" in capsys.readouterr().out
    aside = [p for p in run.iterdir() if p.name.startswith("superseded-")]
    assert len(aside) == 1
    assert {aside[0].name + "/" + str(k): v for k, v in old.items()} == \
        {str(p.relative_to(run)): p.read_bytes() for p in aside[0].rglob("*") if p.is_file()}
    assert load_checkpoint(run / "checkpoints/final.pt")["step"] == 1
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_world_size_and_precision_spellings_in_the_check(shapes_dir, tmp_path):
    from vlp.train.resume import ResumeError, check_resumable, config_differences

    saved = _cfg(shapes_dir, tmp_path, "train.precision=no")
    assert config_differences(saved, _cfg(shapes_dir, tmp_path, "train.precision=fp32", "train.steps=9")) == []
    with pytest.raises(ResumeError, match=r"world size \(processes\): 2 -> 1"):
        check_resumable("runs/x", _yaml(saved), saved, 2, 1)
    check_resumable("runs/x", _yaml(saved), saved, None, 1)  # older checkpoints without the record


def _yaml(cfg):
    from vlp.config import config_to_yaml

    return config_to_yaml(cfg)


def test_warmup_longer_than_the_run_warns(shapes_dir, tmp_path, capsys):
    engine.train(_cfg(shapes_dir, tmp_path, "train.steps=1", "optim.warmup_steps=5", "train.run_name=w"))
    assert "optim.warmup_steps=5 exceeds train.steps=1" in capsys.readouterr().out
    engine.train(_cfg(shapes_dir, tmp_path, "train.steps=1", "optim.warmup_steps=1", "train.run_name=w2"))
    assert "exceeds train.steps" not in capsys.readouterr().out


def test_fp16_on_cpu_runs_in_half_precision_with_a_scaler(shapes_dir, tmp_path):
    losses = {}
    for precision in ("no", "fp16"):
        run = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=2", f"train.precision={precision}",
                                f"train.run_name=p-{precision}"))
        losses[precision] = [json.loads(line)["loss/total"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        state = load_checkpoint(run / "checkpoints/final.pt")
        if precision == "fp16":
            assert state["grad_scaler"]["scale"] > 0
            assert json.loads((run / "train_summary.json").read_text())["precision"] == "fp16"
        else:
            assert state["grad_scaler"] is None
            assert json.loads((run / "train_summary.json").read_text())["precision"] == "fp32"
    # the first loss is computed before any update: it differs only by float16 rounding
    assert losses["fp16"][0] != losses["no"][0]
    assert losses["fp16"][0] == pytest.approx(losses["no"][0], abs=0.05)
    assert torch.isfinite(torch.tensor(losses["fp16"])).all()
