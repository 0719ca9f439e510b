"""The real CLIs on tiny data: generate, train, evaluate, resume, export, two processes."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

pytestmark = pytest.mark.slow
TINY_OVERRIDES = [
    "model.arch.vision_cfg.image_size=32", "model.arch.vision_cfg.width=64", "model.arch.vision_cfg.layers=2",
    "model.arch.text_cfg.width=64", "model.arch.text_cfg.layers=2", "model.arch.embed_dim=32",
    "train.batch_size=16", "train.log_every=5", "optim.warmup_steps=5", "data.shuffle_buffer=64",
]


def _run(args, env, check=True):
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _train(shapes_dir, out_dir, name, extra, env, check=True):
    args = [sys.executable, "train.py", "--config", "configs/tiny.yaml", f"data.train_shards={shapes_dir}/train",
            f"eval.builtin_root={shapes_dir}/eval", f"train.output_dir={out_dir}", f"train.run_name={name}",
            *TINY_OVERRIDES, *extra]
    return _run(args, env, check)


def test_generate_train_evaluate(shapes_dir, tmp_path, cli_env):
    proc = _train(shapes_dir, tmp_path, "e2e", ["train.steps=20", "train.checkpoint_every=10"], cli_env)
    run = tmp_path / "e2e"
    assert "zeroshot" in proc.stdout and "acc1" in proc.stdout  # the final table was printed
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["final.pt", "step-00000010.pt"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [5, 10, 15, 20]
    assert all(r["loss/total"] > 0 and r["loss/total"] == r["loss/clip"] for r in lines)
    assert lines[-1]["logit_scale"] >= 1.0 and lines[-1]["logit_scale"] <= 100.0
    assert lines[-1]["epoch"] == pytest.approx(20 * 16 / 256)
    assert "optim:" in (run / "config.yaml").read_text()

    results = json.loads((run / "eval_results.json").read_text())
    zs = results["zeroshot"]["metrics"]
    assert 0.0 <= zs["acc1"] <= zs["acc5"] <= 1.0
    assert results["zeroshot"]["num_samples"] == 32 and results["zeroshot"]["skipped"] == 0
    ret = results["retrieval"]["metrics"]
    for k1, k5 in [("image_retrieval_recall@1", "image_retrieval_recall@5"), ("text_retrieval_recall@1", "text_retrieval_recall@5")]:
        assert 0.0 <= ret[k1] <= ret[k5] <= 1.0
    assert 0.0 <= results["compositional"]["metrics"]["acc"] <= 1.0

    # the eval CLI on the run directory reproduces the trainer's final zero-shot numbers
    out_json = tmp_path / "zs.json"
    _run([sys.executable, "-m", "eval", "zeroshot", "--model", str(run), "--dataset",
          f"{shapes_dir}/eval/zeroshot", "--output", str(out_json)], cli_env)
    cli = json.loads(out_json.read_text())
    assert cli["task"] == "zeroshot_classification"
    assert cli["metrics"]["acc1"] == pytest.approx(zs["acc1"], abs=1e-9)


def test_resume_continues_from_the_newest_checkpoint(shapes_dir, tmp_path, cli_env):
    _train(shapes_dir, tmp_path, "res", ["train.steps=10", "eval.at_end=false"], cli_env)
    first = torch.load(tmp_path / "res/checkpoints/final.pt", weights_only=True)
    assert first["step"] == 10
    assert first["samples_seen"] == 10 * 16
    proc = _train(shapes_dir, tmp_path, "res", ["train.steps=20", "eval.at_end=false"], cli_env)
    assert "resumed from" in proc.stdout and "at step 10" in proc.stdout
    assert "data at the saved loader position (epoch 0, mid-epoch) (160 samples seen)" in proc.stdout  # 256 an epoch
    steps = [json.loads(line)["step"] for line in (tmp_path / "res/metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20]
    final = torch.load(tmp_path / "res/checkpoints/final.pt", weights_only=True)
    assert final["step"] == 20 and final["samples_seen"] == 20 * 16
    proc = _train(shapes_dir, tmp_path, "res", ["train.steps=22", "eval.at_end=false"], cli_env)
    assert "(epoch 1, mid-epoch) (320 samples seen)" in proc.stdout  # past the first epoch: into its next one


def test_bad_config_stops_before_work(tmp_path, cli_env):
    proc = _run([sys.executable, "train.py", "--config", "configs/tiny.yaml", "optim.lrr=1",
                 f"train.output_dir={tmp_path}"], cli_env, check=False)
    assert proc.returncode == 2
    assert "optim.lrr: unknown config key; did you mean 'optim.lr'?" in proc.stderr
    assert not any(tmp_path.iterdir())  # no run directory was created
    proc = _run([sys.executable, "train.py", "--config", "configs/tiny.yaml", f"data.train_shards={tmp_path}/none",
                 f"train.output_dir={tmp_path}", "train.run_name=missing"], cli_env, check=False)
    assert proc.returncode == 2 and "none" in proc.stderr


def test_two_processes_with_torchrun(shapes_dir, tmp_path, cli_env):
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
            "train.py", "--config", "configs/tiny.yaml", f"data.train_shards={shapes_dir}/train",
            f"eval.builtin_root={shapes_dir}/eval", f"train.output_dir={tmp_path}", "train.run_name=ddp",
            "train.steps=6", "eval.at_end=false", "data.workers=1", *TINY_OVERRIDES]
    proc = _run(args, cli_env)
    assert "2 process(es)" in proc.stdout and "global batch 32" in proc.stdout
    lines = [json.loads(line) for line in (tmp_path / "ddp/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [5, 6]
    # 2 ranks x 16 samples per step: the epoch fraction counts the global batch
    assert lines[-1]["epoch"] == pytest.approx(6 * 32 / 256)
    final = torch.load(tmp_path / "ddp/checkpoints/final.pt", weights_only=True)
    assert final["step"] == 6 and final["world_size"] == 2
    assert proc.stdout.count("done:") == 1  # rank 0 only
    # the same run directory on one process: another world size, refused before any work
    proc = _train(shapes_dir, tmp_path, "ddp", ["train.steps=8", "eval.at_end=false", "data.workers=1"], cli_env,
                  check=False)
    assert proc.returncode == 2 and "world size (processes): 2 -> 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert torch.load(tmp_path / "ddp/checkpoints/final.pt", weights_only=True)["step"] == 6


def _metrics(results):
    return {name: result["metrics"] for name, result in results.items()}


def test_end_of_training_evaluation_on_two_processes_equals_one(shapes_dir, tmp_path, cli_env):
    """train.py hands eval's evaluation to the trainer, which runs it on every rank: the split
    evaluation of the final model equals ``eval builtin`` of it in one process; ``vlp-train``
    (here ``python -m vlp.train.cli``) finds the same evaluation through the installed entry point."""
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534",
            "train.py", "--config", "configs/tiny.yaml", f"data.train_shards={shapes_dir}/train",
            f"eval.builtin_root={shapes_dir}/eval", f"train.output_dir={tmp_path}", "train.run_name=ddp",
            "train.steps=3", "data.workers=1", "eval.batch_size=8", *TINY_OVERRIDES]
    proc = _run(args, cli_env)
    assert proc.stdout.count("results: ") == 1  # printed by rank 0 only
    split = json.loads((tmp_path / "ddp/eval_results.json").read_text())
    _run([sys.executable, "-m", "eval", "builtin", "--model", str(tmp_path / "ddp"), "--root", f"{shapes_dir}/eval",
          "--output-dir", str(tmp_path / "single"), "--no-cache", "--no-progress", "--num-workers", "0"], cli_env)
    single = {name: json.loads(next((tmp_path / "single").glob(f"*_{task}.json")).read_text())
              for name, task in (("zeroshot", "zeroshot"), ("retrieval", "retrieval"),
                                 ("compositional", "compositionality"))}
    assert _metrics(split).keys() == _metrics(single).keys()
    for name in split:
        assert split[name]["metrics"] == pytest.approx(single[name]["metrics"], abs=1e-6), name
    proc = _run([sys.executable, "-m", "vlp.train.cli", "--config", "configs/tiny.yaml",
                 f"data.train_shards={shapes_dir}/train", f"eval.builtin_root={shapes_dir}/eval",
                 f"train.output_dir={tmp_path}", "train.run_name=entry", "train.steps=2", "data.workers=0",
                 *TINY_OVERRIDES], cli_env)
    assert (tmp_path / "entry/eval_results.json").is_file() and "results: " in proc.stdout
