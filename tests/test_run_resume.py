"""Run directories: a run is resumed only by a config that trains the same thing, never past its
target, and a refused or restarted run keeps every file of the old one."""

import json
import shutil

import pytest
import torch

from vlp.config import load_config
from vlp.train import cli, engine
from vlp.checkpoints import load_checkpoint

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


def test_a_crash_after_extending_a_run_resumes_from_the_newest_step_file(shapes_dir, tmp_path, monkeypatch):
    from vlp.losses import registry

    run = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=2", "train.run_name=ext2"))
    real = registry.LOSS_TERMS["clip"]
    calls = {"n": 0}

    def crash_on_the_fourth_batch(outputs, **options):  # steps 3, 4, 5 pass; step 6 is killed
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return real(outputs, **options)

    monkeypatch.setitem(registry.LOSS_TERMS, "clip", crash_on_the_fourth_batch)
    with pytest.raises(KeyboardInterrupt):
        engine.train(_cfg(shapes_dir, tmp_path, "train.steps=6", "train.run_name=ext2", "train.checkpoint_every=3"))
    monkeypatch.setitem(registry.LOSS_TERMS, "clip", real)
    assert load_checkpoint(run / "checkpoints/final.pt")["step"] == 2
    assert load_checkpoint(run / "checkpoints/step-00000003.pt")["step"] == 3  # the newest before the crash
    engine.train(_cfg(shapes_dir, tmp_path, "train.steps=6", "train.run_name=ext2", "train.checkpoint_every=3"))
    assert load_checkpoint(run / "checkpoints/final.pt")["samples_seen"] == 6 * 8  # steps 1-6 once each
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    # steps 4 and 5 ran before the crash (the fourth batch of that run was step 6) and were trained again
    assert [json.loads(line)["step"] for line in (run / "metrics.superseded.jsonl").read_text().splitlines()] == [4, 5]


def test_metrics_after_the_resume_point_move_aside(tmp_path):
    from vlp.train.run_dir import RunDir

    run = RunDir(tmp_path)
    lines = [json.dumps({"step": s, "loss/total": 1.0 / s}) for s in (1, 2, 3, 4, 5)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert run.rewind_metrics(3) == 2
    assert (tmp_path / "metrics.jsonl").read_text() == "\n".join(lines[:3]) + "\n"
    assert (tmp_path / "metrics.superseded.jsonl").read_text() == "\n".join(lines[3:]) + "\n"
    assert run.rewind_metrics(3) == 0


def test_default_names_started_in_one_second_are_claimed_apart(tmp_path):
    from vlp.train.run_dir import claim_default_run_name

    names = [claim_default_run_name(tmp_path, "tiny") for _ in range(3)]
    assert len(set(names)) == 3 and all((tmp_path / n).is_dir() for n in names)
    assert all(n.startswith("tiny-") for n in names)


def test_a_scaler_skipped_fp16_step_is_reported(monkeypatch):
    from accelerate import Accelerator

    from vlp.train.precision import Precision

    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([param], lr=0.1)
    precision = Precision(Accelerator(cpu=True), "fp16")
    with precision.autocast():
        loss = (param * float("inf")).sum()
    precision.backward(loss)
    assert precision.step(optimizer, [param], clip_norm=None) is False
    assert torch.equal(param.detach(), torch.ones(3))  # the update was dropped
    assert precision.state_dict()["scale"] == 65536.0 / 2
    optimizer.zero_grad()
    with precision.autocast():
        loss = (param * 2).sum()
    precision.backward(loss)
    assert precision.step(optimizer, [param], clip_norm=None) is True
    assert torch.allclose(param.detach(), torch.full((3,), 0.8))


def test_a_resume_reads_its_checkpoint_not_the_init_file_which_may_be_gone(shapes_dir, tmp_path):
    """``model.init_from`` seeds the first start only: a resumed run continues from its own weights
    even when the init file was moved, and may switch gradient checkpointing on."""
    seed_run = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=1", "train.run_name=seed"))
    init = tmp_path / "init.pt"
    shutil.copy(seed_run / "checkpoints/final.pt", init)
    run = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=2", "train.run_name=r", f"model.init_from={init}"))
    after_two = load_checkpoint(run / "checkpoints/final.pt")["model"]
    init.unlink()
    engine.train(_cfg(shapes_dir, tmp_path, "train.steps=4", "train.run_name=r", f"model.init_from={init}",
                      "model.grad_checkpointing=true"))
    resumed = load_checkpoint(run / "checkpoints/final.pt")
    assert resumed["step"] == 4
    changed = [k for k, v in resumed["model"].items() if not torch.equal(v, after_two[k])]
    assert changed  # it trained on from the step-2 weights (step 3 still runs at the old schedule's final rate 0)
