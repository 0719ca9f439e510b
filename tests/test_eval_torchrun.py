"""``torchrun --nproc_per_node 2 -m eval run``: Accelerate's MULTI_CPU ranks give one process's results."""

import json
import subprocess
import sys

import pytest
import torch

from tiny_arch import TINY_ARCH
from vlp.config import config_to_yaml, load_config
from vlp.models.dual_encoder import DualEncoder
from vlp.train.checkpoint import save_atomic

pytestmark = pytest.mark.slow


def _checkpoint(path):
    arch = {**TINY_ARCH, "text_cfg": {**TINY_ARCH["text_cfg"], "vocab_size": 49408, "context_length": 16}}
    cfg = load_config("configs/tiny.yaml")
    cfg.model.arch = arch
    torch.manual_seed(0)
    model = DualEncoder(arch)
    save_atomic({"model": model.state_dict(), "step": 1, "config": config_to_yaml(cfg)}, path)
    return path


def _eval(args, cli_env, out, cache, data):
    cmd = [*args, "-m", "eval", "run", *data, "--tasks", "zeroshot,retrieval", "--output", str(out), "--cache-dir", str(cache),
           "--no-progress", "--batch-size", "8"]
    return subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=600)


def test_torchrun_two_ranks_equal_one_process(shapes_dir, tmp_path, cli_env):
    ckpt = _checkpoint(tmp_path / "model.pt")
    data = ["--model", str(ckpt), "--datasets", f"{shapes_dir}/eval/zeroshot,{shapes_dir}/eval/retrieval"]
    single = _eval([sys.executable], cli_env, tmp_path / "one", tmp_path / "cache-one", data)
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541"]
    # torchrun runs "-m eval run ..." as its script: pass --model/--datasets after the module
    cmd = torchrun + ["-m", "eval", "run", "--tasks", "zeroshot,retrieval", "--output", str(tmp_path / "two"),
                      "--cache-dir", str(tmp_path / "cache-two"), "--no-progress", "--batch-size", "8",
                      *data]  # with the retrieval grid: rank 0 draws it, no rank may wait on a collective
    two = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr
    for name in ("zeroshot_zeroshot.json", "retrieval_retrieval.json"):
        one_result = json.loads((tmp_path / "one" / name).read_text())
        two_result = json.loads((tmp_path / "two" / name).read_text())
        assert two_result["metrics"] == one_result["metrics"]
        assert two_result["skipped"] == one_result["skipped"] == 0
    one_csv = (tmp_path / "one" / "results.csv").read_text().replace(str(tmp_path / "one"), "OUT")
    assert (tmp_path / "two" / "results.csv").read_text().replace(str(tmp_path / "two"), "OUT") == one_csv
