"""Exact resume: a run killed with SIGKILL at a step between checkpoints and resumed ends with
bitwise the weights of the run that was never interrupted, and consumes every sample of an epoch
exactly once over the whole run (1 and 2 loader workers; epoch and resampled mode)."""

import json
import multiprocessing as mp
import os
import signal
from collections import Counter

import pytest
import torch

from vlp.checkpoints import load_checkpoint

SMALL = [
    "model.arch.vision_cfg.image_size=32", "model.arch.vision_cfg.width=32", "model.arch.vision_cfg.head_width=16",
    "model.arch.vision_cfg.layers=1", "model.arch.text_cfg.width=32", "model.arch.text_cfg.layers=1",
    "model.arch.embed_dim=16", "train.batch_size=16", "train.log_every=5", "optim.warmup_steps=2",
    "eval.at_end=false", "train.report_to=none", "train.plot=false",
    "train.checkpoint_every=6", "train.keep_checkpoints=1", "model.patch_dropout=0.25", "train.threads=1",
]
STEPS = 20  # 256 samples / batch 16 = 16 steps per epoch: the run crosses into a second epoch


def _train_child(args, keys_file, kill_after):
    """Train with ``args``, appending each step's sample keys to ``keys_file``; SIGKILL itself right
    after optimizer step ``kill_after`` (None: run to the end)."""
    from vlp.config import load_config
    from vlp.train import engine

    step_once = engine._step

    def recording_step(state, batches):
        with open(keys_file, "a") as f:
            f.write(json.dumps({"step": state.step + 1, "keys": [k for b in batches for k in b["key"]]}) + "\n")
        losses = step_once(state, batches)
        if kill_after is not None and state.step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return losses

    engine._step = recording_step
    engine.train(load_config("configs/tiny.yaml", args), evaluate=None)


def _run(args, keys_file, kill_after=None):
    process = mp.get_context("fork").Process(target=_train_child, args=(args, str(keys_file), kill_after))
    process.start()
    process.join(300)
    return process.exitcode


def _steps(keys_file):
    return [json.loads(line) for line in keys_file.read_text().splitlines()]


@pytest.mark.parametrize("workers,resampled,buffer", [
    (1, False, 0), pytest.param(2, False, 32, marks=pytest.mark.slow), pytest.param(1, True, 32, marks=pytest.mark.slow),
    (2, True, 32)])
def test_killed_and_resumed_run_ends_bitwise_equal_and_reads_each_sample_once(shapes_dir, tmp_path, workers,
                                                                                resampled, buffer):
    args = [f"data.train_shards={shapes_dir}/train", f"train.output_dir={tmp_path}", *SMALL,
            f"data.workers={workers}", f"data.resampled={str(resampled).lower()}", f"train.steps={STEPS}",
            f"data.shuffle_buffer={buffer}"]
    kill_after = int(torch.randint(7, STEPS - 1, (1,), generator=torch.Generator().manual_seed(workers)).item())
    if kill_after % 6 == 0:
        kill_after += 1  # between checkpoints, so the resumed run trains some steps again
    assert _run(args + ["train.run_name=whole"], tmp_path / "whole.jsonl") == 0
    assert _run(args + ["train.run_name=cut"], tmp_path / "cut.jsonl", kill_after) == -signal.SIGKILL
    assert not (tmp_path / "cut/checkpoints/final.pt").exists()
    assert _run(args + ["train.run_name=cut"], tmp_path / "resumed.jsonl") == 0

    whole = load_checkpoint(tmp_path / "whole/checkpoints/final.pt")
    cut = load_checkpoint(tmp_path / "cut/checkpoints/final.pt")
    assert cut["step"] == whole["step"] == STEPS
    for name, value in whole["model"].items():
        assert torch.equal(cut["model"][name], value), name
    for k, v in whole["optimizer"]["state"].items():
        assert torch.equal(cut["optimizer"]["state"][k]["exp_avg_sq"], v["exp_avg_sq"])

    resumed = _steps(tmp_path / "resumed.jsonl")
    start = resumed[0]["step"]  # the first step the resumed run trained: one after its checkpoint
    assert start - 1 == kill_after - kill_after % 6
    consumed = [s for s in _steps(tmp_path / "cut.jsonl") if s["step"] < start] + resumed
    assert [s["step"] for s in consumed] == list(range(1, STEPS + 1))
    assert [s["keys"] for s in consumed] == [s["keys"] for s in _steps(tmp_path / "whole.jsonl")]
    if not resampled and not buffer:  # without a buffer mixing epochs, the first 16 steps are epoch 0: each sample once
        first_epoch = Counter(k for s in consumed[:16] for k in s["keys"])
        assert len(first_epoch) == 256 and set(first_epoch.values()) == {1}
