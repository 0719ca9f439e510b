"""train.accum_steps through the engine: k loader batches per step give the update of one k-times
larger batch (the same data in the same order), counted as k x batch samples per step."""

import json

import pytest
import torch

from vlp.checkpoints import load_checkpoint
from vlp.config import load_config
from vlp.train import engine

SMALL = [
    "model.arch.vision_cfg.image_size=32", "model.arch.vision_cfg.width=32", "model.arch.vision_cfg.head_width=16",
    "model.arch.vision_cfg.layers=1", "model.arch.text_cfg.width=32", "model.arch.text_cfg.layers=1",
    "model.arch.embed_dim=16", "train.log_every=1", "optim.warmup_steps=1", "train.steps=3",
    "data.shuffle_buffer=0", "data.workers=0", "eval.at_end=false", "train.report_to=none", "train.plot=false",
]


def _run(shapes_dir, tmp_path, name, *extra):
    cfg = load_config("configs/tiny.yaml", [f"data.train_shards={shapes_dir}/train", f"train.output_dir={tmp_path}",
                                            *SMALL, f"train.run_name={name}", *extra])
    run = engine.train(cfg, evaluate=None)
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()], \
        load_checkpoint(run / "checkpoints/final.pt")


def test_four_cached_micro_batches_train_like_one_batch_of_sixteen(shapes_dir, tmp_path):
    big, big_ckpt = _run(shapes_dir, tmp_path, "big", "train.batch_size=16")
    cached, cached_ckpt = _run(shapes_dir, tmp_path, "cached", "train.batch_size=4", "train.accum_steps=4")
    assert [r["samples_seen"] for r in cached] == [16, 32, 48] == [r["samples_seen"] for r in big]
    assert [r["loss/total"] for r in cached] == pytest.approx([r["loss/total"] for r in big], abs=1e-5)
    for name, value in big_ckpt["model"].items():
        assert torch.allclose(cached_ckpt["model"][name], value, atol=1e-5), name
    plain, _ = _run(shapes_dir, tmp_path, "plain", "train.batch_size=4")
    assert abs(plain[0]["loss/total"] - big[0]["loss/total"]) > 1e-2  # a batch of 4 alone is another objective
