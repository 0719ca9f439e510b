"""The head recipes on 2 CPU processes under torchrun: ProtoCLIP (back translation, no
within-modality term: nothing trains the prototypes by gradient, which DDP without
find_unused_parameters would refuse) trains, its episodic k-means leaves identical prototypes on
both ranks, and CoCa trains and logs its caption loss. Each rank saves its own model at the end
(through the trainer's ``evaluate`` hook, which runs on every rank)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT

pytestmark = pytest.mark.slow
SHRINK = [  # the tiny recipes at test size: batch 8 per rank on 48 px shapes
    "model.arch.vision_cfg.image_size=48", "model.arch.vision_cfg.layers=1", "model.arch.text_cfg.layers=1",
    "model.arch.text_cfg.context_length=16", "train.batch_size=8", "train.log_every=1", "optim.warmup_steps=1",
    "data.shuffle_buffer=0", "data.workers=0", "eval.at_end=true",
]


def _worker(recipe: str, *overrides: str) -> None:
    """Train ``recipe`` with ``overrides``; every rank saves its final model state as rank<r>.pt."""
    from vlp.config import load_config
    from vlp.train import engine

    def save_rank_state(model, cfg, run_dir):
        rank = int(os.environ.get("RANK", "0"))
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, Path(run_dir) / f"rank{rank}.pt")

    torch.set_num_threads(1)
    engine.train(load_config(recipe, list(overrides)), evaluate=save_rank_state)


def _torchrun(shapes_dir: Path, out: Path, name: str, recipe: str, port: int, extra: list, env: dict) -> Path:
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            str(Path(__file__).resolve()), "worker", recipe, f"data.train_shards={shapes_dir}/train",
            f"train.output_dir={out}", f"train.run_name={name}", *SHRINK, *extra]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out / name


def _metrics(run: Path) -> list:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_protoclip_back_translation_on_two_ranks(shapes_dir, tmp_path, cli_env):
    # 8 pairs per rank per step: the episode of 16 is full at steps 2 and 4
    run = _torchrun(shapes_dir, tmp_path, "proto", "configs/protoclip_tiny.yaml", 29571,
                    ["train.steps=4", "model.heads.prototypes.num_prototypes=4",
                     "model.heads.prototypes.kmeans_episode=16"], cli_env)
    lines = _metrics(run)
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    assert all("loss/prototype" in line and "head/prototypes/image_unused" in line for line in lines)
    ranks = [torch.load(run / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert int(ranks[0]["heads.prototypes.kmeans_episodes"]) == int(ranks[1]["heads.prototypes.kmeans_episodes"]) == 2
    for side in ("image", "text"):
        key = f"heads.prototypes.prototypes.{side}"
        assert torch.equal(ranks[0][key], ranks[1][key]), side  # the k-means refresh is the same on both ranks
        torch.testing.assert_close(ranks[0][key].norm(dim=1), torch.ones(4))
    for key in ranks[0]:  # and everything else DDP keeps in step
        assert torch.equal(ranks[0][key], ranks[1][key]), key


def test_coca_on_two_ranks_logs_its_losses(shapes_dir, tmp_path, cli_env):
    run = _torchrun(shapes_dir, tmp_path, "coca", "configs/coca_tiny.yaml", 29572, ["train.steps=3"], cli_env)
    lines = _metrics(run)
    assert [line["step"] for line in lines] == [1, 2, 3]
    for line in lines:
        assert line["loss/total"] == pytest.approx(line["loss/clip"] + 2.0 * line["loss/caption"], rel=1e-5)
    ranks = [torch.load(run / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert any(k.startswith("heads.caption.") for k in ranks[0])
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(*sys.argv[2:])
