"""The trainer under bad steps: a non-finite loss is skipped and counted; a run of them stops
the run with the last checkpoint intact."""

import json

import pytest
import torch

from vlp.config import load_config
from vlp.losses import registry
from vlp.train import engine
from vlp.checkpoints import load_checkpoint

SMALL = [
    "model.arch.vision_cfg.image_size=32", "model.arch.vision_cfg.width=32", "model.arch.vision_cfg.head_width=16", "model.arch.vision_cfg.layers=1",
    "model.arch.text_cfg.width=32", "model.arch.text_cfg.layers=1", "model.arch.embed_dim=16",
    "train.batch_size=8", "train.log_every=1", "optim.warmup_steps=1", "data.shuffle_buffer=0",
    "data.workers=0", "eval.at_end=false",
]


def _cfg(shapes_dir, tmp_path, *extra):
    return load_config("configs/tiny.yaml", [f"data.train_shards={shapes_dir}/train", f"train.output_dir={tmp_path}",
                                             "train.run_name=faults", *SMALL, *extra])


def _nan_on(calls_to_poison):
    calls = {"n": 0}

    def term(outputs):
        calls["n"] += 1
        value = outputs["image_emb"].sum() * 0 + outputs["logit_scale"]
        return value * float("nan") if calls["n"] in calls_to_poison else value
    return term


def test_single_nonfinite_step_is_skipped_and_counted(shapes_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(registry.LOSS_TERMS, "flaky", _nan_on({2}))
    run = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=3", "loss.terms=[{name: flaky}]"))
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["nonfinite_steps"] == 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # step 2 never happened as an update: three good updates over four batches
    assert [r["step"] for r in records] == [1, 2, 3] and records[-1]["nonfinite_steps"] == 1
    assert load_checkpoint(run / "checkpoints/final.pt")["step"] == 3


def test_nonfinite_streak_stops_and_keeps_checkpoint(shapes_dir, tmp_path, monkeypatch):
    run = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=2"))
    before = load_checkpoint(run / "checkpoints/final.pt")
    # the same run resumed (same config), its objective now failing on every batch
    monkeypatch.setitem(registry.LOSS_TERMS, "clip", _nan_on(set(range(1, 100))))
    monkeypatch.setattr(engine, "MAX_NONFINITE_IN_A_ROW", 3)
    with pytest.raises(engine.NonFiniteLossError, match="3 steps in a row"):
        engine.train(_cfg(shapes_dir, tmp_path, "train.steps=6"))
    after = load_checkpoint(run / "checkpoints/final.pt")
    assert after["step"] == 2
    for key, tensor in before["model"].items():
        assert torch.equal(tensor, after["model"][key]), key
