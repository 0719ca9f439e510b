"""The engine under accelerate's FSDP2 on 2 CPU processes (gloo) trains step for step like DDP,
writes the same single-file checkpoint, and resumes from it into the sharded model and optimizer.

accelerate itself never sets FSDP up on a CPU: ``AcceleratorState.__init__`` (accelerate/state.py)
takes FSDP only for the MULTI_GPU family of distributed types, so under torchrun with ``cpu=True``
an FSDP request silently becomes MULTI_CPU DDP, which ``make_accelerator`` refuses (see
tests/test_accelerate_configs.py). torch's ``fully_shard`` does run on gloo, so here each worker
switches accelerate's state to FSDP after the Accelerator is built, with the plugin accelerate
builds from the environment ``accelerate launch --config_file configs/accelerate/fsdp.yaml``
sets; everything after that (accelerate's FSDP2 prepare, its state dicts and gradient clipping,
the engine, vlp/train/accelerator.py) is the code a GPU run executes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import ROOT  # noqa: E402


def _engine_has_the_fsdp_change() -> bool:
    """The engine places the model through vlp.train.accelerator (see docs/DISTRIBUTED.md)."""
    from vlp.train import engine, step_log

    return hasattr(engine, "prepare_model_and_optimizer") and hasattr(step_log, "full_value")


pytestmark = pytest.mark.slow
needs_engine_change = pytest.mark.skipif(
    not _engine_has_the_fsdp_change(), reason="the engine does not yet place the model with "
    "vlp.train.accelerator.prepare_model_and_optimizer nor read the temperature with full_value")
SMALL = [  # the tiny recipe at test size: batch 8 per rank, one block per tower
    "model.arch.vision_cfg.image_size=32", "model.arch.vision_cfg.width=32", "model.arch.vision_cfg.head_width=16",
    "model.arch.vision_cfg.layers=1", "model.arch.text_cfg.width=32", "model.arch.text_cfg.layers=1",
    "model.arch.embed_dim=16", "train.batch_size=8", "train.log_every=1", "optim.warmup_steps=1",
    "data.shuffle_buffer=0", "data.workers=0", "eval.at_end=false", "train.report_to=none", "train.plot=false",
]
TOLERANCE = 1e-5


def _use_fsdp_on_cpu() -> None:
    """Make vlp.train.accelerator build Accelerators whose state says FSDP (see the module docstring)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from vlp.train import accelerator as vlp_accelerator

    class FsdpOnCpu(Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables of the launch config
            if self.state.mixed_precision != "no":  # as AcceleratorState does with the plugin it keeps
                plugin.set_mixed_precision(self.state.mixed_precision)
            for shared in (PartialState._shared_state, AcceleratorState._shared_state):
                shared["distributed_type"] = DistributedType.FSDP
            AcceleratorState._shared_state["fsdp_plugin"] = plugin

    vlp_accelerator.Accelerator = FsdpOnCpu


def _check_sharded(prepare):
    """``prepare`` that also reports (on stdout) that the model came back FSDP2-sharded."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    def prepare_and_check(accelerator, model, optimizer):
        model, optimizer = prepare(accelerator, model, optimizer)
        params = list(model.parameters())
        assert isinstance(model, FSDPModule) and all(isinstance(p, DTensor) for p in params)
        print(f"rank {accelerator.process_index}: FSDP2, {len(params)} sharded parameters, "
              f"{sum(p.to_local().numel() for p in params)} of {sum(p.numel() for p in params)} values here")
        return model, optimizer

    return prepare_and_check


def _worker(mode: str, *overrides: str) -> None:
    from vlp.config import load_config
    from vlp.train import engine

    torch.set_num_threads(1)
    if mode == "fsdp":
        _use_fsdp_on_cpu()
        engine.prepare_model_and_optimizer = _check_sharded(engine.prepare_model_and_optimizer)
    engine.train(load_config("configs/tiny.yaml", list(overrides)), evaluate=None)


def _fsdp_environment() -> Dict[str, str]:
    from test_accelerate_configs import launch_environment

    env = launch_environment(ROOT / "configs" / "accelerate" / "fsdp.yaml")
    return {k: v for k, v in env.items() if k == "ACCELERATE_USE_FSDP" or k.startswith("FSDP_")}


def _torchrun(mode: str, shapes_dir: Path, out: Path, name: str, port: int, extra: List[str], env: dict) -> Path:
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            str(Path(__file__).resolve()), "worker", mode, f"data.train_shards={shapes_dir}/train",
            f"train.output_dir={out}", f"train.run_name={name}", *SMALL, *extra]
    env = {**env, **(_fsdp_environment() if mode == "fsdp" else {})}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    if mode == "fsdp":
        assert proc.stdout.count("FSDP2, ") == 2, proc.stdout[-2000:]  # both ranks trained a sharded model
    return out / name


def _losses(run: Path) -> Dict[int, float]:
    return {r["step"]: r["loss/total"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def _largest_difference(a, b, where: str = "") -> float:
    """The largest |a - b| over two checkpoint entries (nested dicts / lists of tensors and numbers),
    after asserting they have one layout: the same keys, shapes, dtypes and non-tensor values."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, sorted(set(a) ^ set(b), key=str)[:5])
        return max([_largest_difference(a[k], b[k], f"{where}.{k}") for k in a], default=0.0)
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        return max([_largest_difference(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b))], default=0.0)
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, (where, a.shape, b.shape)
        return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    assert a == b, (where, a, b)
    return 0.0


@pytest.fixture(scope="module")
def runs(shapes_dir, tmp_path_factory):
    """5 steps under DDP and under FSDP (a checkpoint at step 3 in each), and FSDP's step-3
    checkpoint resumed under FSDP and under DDP (a constant learning rate after one warmup step,
    so the last steps depend on the AdamW moments the resume restores)."""
    out = tmp_path_factory.mktemp("fsdp")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    for flag in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        env.pop(flag, None)
    steps = ["train.steps=5", "train.checkpoint_every=3", "optim.schedule=constant"]
    ddp = _torchrun("ddp", shapes_dir, out, "ddp", 29581, steps, env)
    fsdp = _torchrun("fsdp", shapes_dir, out, "fsdp", 29582, steps, env)
    at_3 = [*steps, f"train.resume={fsdp}/checkpoints/step-00000003.pt"]
    resumed = {mode: _torchrun(mode, shapes_dir, out, f"{mode}-resumed", port, at_3, env)
               for mode, port in (("fsdp", 29583), ("ddp", 29584))}
    return {"ddp": ddp, "fsdp": fsdp, "fsdp-resumed": resumed["fsdp"], "ddp-resumed": resumed["ddp"]}


def _final(run: Path) -> Dict:
    return torch.load(run / "checkpoints/final.pt", weights_only=True)


@needs_engine_change
def test_fsdp_loss_curve_matches_ddp(runs):
    ddp, fsdp = _losses(runs["ddp"]), _losses(runs["fsdp"])
    assert list(ddp) == list(fsdp) == [1, 2, 3, 4, 5]
    differences = {step: abs(ddp[step] - fsdp[step]) for step in ddp}
    print(f"|loss DDP - loss FSDP| per step: {differences}")
    assert max(differences.values()) < TOLERANCE, differences
    summaries = [json.loads((runs[m] / "train_summary.json").read_text()) for m in ("ddp", "fsdp")]
    assert summaries[0]["global_batch"] == summaries[1]["global_batch"] == 16


@needs_engine_change
def test_fsdp_checkpoint_has_the_ddp_layout_and_values(runs):
    ddp, fsdp = _final(runs["ddp"]), _final(runs["fsdp"])
    assert fsdp["model"]["logit_head.logit_scale"].shape == ()  # a scalar again, as open_clip and DDP have it
    assert fsdp["optimizer"]["state"] and all(int(s["step"]) == 5 for s in fsdp["optimizer"]["state"].values())
    model, optimizer = _largest_difference(ddp["model"], fsdp["model"]), _largest_difference(ddp["optimizer"], fsdp["optimizer"])
    print(f"final checkpoints DDP vs FSDP: max |model diff| {model:.3g}, max |optimizer state diff| {optimizer:.3g}")
    assert model < TOLERANCE and optimizer < TOLERANCE
    assert (ddp["step"], ddp["world_size"]) == (fsdp["step"], fsdp["world_size"]) == (5, 2)


@needs_engine_change
def test_fsdp_checkpoint_resumes_into_the_sharded_model_and_optimizer(runs):
    """Resumed under FSDP the run continues as the same checkpoint resumed under DDP: the weights
    and the AdamW moments (their step count 5, not restarted at 2) came back into the shards."""
    sharded, plain = _losses(runs["fsdp-resumed"]), _losses(runs["ddp-resumed"])
    assert list(sharded) == list(plain) == [4, 5]
    differences = {step: abs(sharded[step] - plain[step]) for step in sharded}
    print(f"|loss resumed under FSDP - under DDP|: {differences}")
    assert max(differences.values()) < TOLERANCE, differences
    a, b = _final(runs["fsdp-resumed"]), _final(runs["ddp-resumed"])
    assert all(int(s["step"]) == 5 for s in a["optimizer"]["state"].values())
    model, optimizer = _largest_difference(a["model"], b["model"]), _largest_difference(a["optimizer"], b["optimizer"])
    print(f"resumed final checkpoints FSDP vs DDP: max |model diff| {model:.3g}, max |optimizer state diff| {optimizer:.3g}")
    assert model < TOLERANCE and optimizer < TOLERANCE


def test_an_fsdp_launch_on_cpu_is_refused_not_trained_as_ddp(shapes_dir, tmp_path):
    """Without the test's switch, accelerate sets up MULTI_CPU DDP under the FSDP launch environment;
    the engine stops before any work and says why."""
    env = {**os.environ, **_fsdp_environment(), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29585",
            "train.py", "--config", "configs/tiny.yaml", f"data.train_shards={shapes_dir}/train",
            f"train.output_dir={tmp_path}", "train.run_name=refused", *SMALL, "train.steps=2"]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "accelerate runs FSDP and DeepSpeed only on GPUs" in proc.stdout + proc.stderr
    assert not (tmp_path / "refused" / "checkpoints").exists()


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(*sys.argv[2:])
