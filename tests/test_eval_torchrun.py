"""Data-parallel eval under ``torchrun --nproc_per_node 2`` (Accelerate's MULTI_CPU ranks, gloo)
gives one process's results: ``eval run``, ``eval builtin``, every compositional format, and the
end-of-training evaluation (:func:`eval.training.evaluate_at_end`, on every rank).

Run as a script (``python tests/test_eval_torchrun.py worker ...``) this file is the worker the
second test starts, once alone and once under torchrun.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_arch import TINY_ARCH
from vlp.config import config_to_yaml, load_config
from vlp.models.dual_encoder import DualEncoder
from vlp.checkpoints import save_atomic

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


def _worker(ckpt: str, builtin_root: str, formats: str, out: str) -> None:
    """``eval builtin``, ``eval run`` of the compositional formats, then ``evaluate_at_end`` on
    the checkpoint's model (on every rank; each rank saves what it got)."""
    from eval.__main__ import main
    from eval.training import evaluate_at_end
    from vlp.interop.vlp_files import load_model_and_config

    torch.set_num_threads(1)
    common = ["--model", ckpt, "--no-progress", "--batch-size", "2", "--num-workers", "0", "--device", "cpu"]
    assert main(["builtin", *common, "--root", builtin_root, "--output-dir", f"{out}/builtin",
                 "--cache-dir", f"{out}/cache-builtin"]) == 0
    assert main(["run", *common, "--tasks", "compositionality", "--datasets", formats, "--output", f"{out}/formats",
                 "--cache-dir", f"{out}/cache-formats"]) == 0
    model, cfg, _ = load_model_and_config(ckpt)
    cfg.eval.builtin_root, cfg.eval.batch_size, cfg.eval.cache = builtin_root, 2, False
    results = evaluate_at_end(model, cfg, Path(out))  # the process group Accelerate started above, if any
    rank = int(os.environ.get("RANK", "0"))
    Path(out, f"at_end_rank{rank}.json").write_text(json.dumps(results, sort_keys=True))


def _metrics(folder: Path) -> dict:
    return {p.name: (json.loads(p.read_text())["metrics"], json.loads(p.read_text())["skipped"])
            for p in sorted(folder.glob("*.json"))}


def test_torchrun_builtin_compositional_formats_and_evaluate_at_end(shapes_dir, tmp_path, cli_env):
    from test_eval_compositional import make_aro_vg, make_sugarcrepe, make_winoground
    from test_eval_datasets import make_compositional

    ckpt = _checkpoint(tmp_path / "model.pt")
    formats = ",".join(str(f(tmp_path / "data" / name)) for f, name in (
        (make_compositional, "comp"), (make_aro_vg, "aro"), (make_sugarcrepe, "sc"), (make_winoground, "wino")))
    args = [str(ckpt), f"{shapes_dir}/eval", formats]
    script = str(Path(__file__).resolve())
    one = subprocess.run([sys.executable, script, "worker", *args, str(tmp_path / "one")], env=cli_env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29543"]
    two = subprocess.run([*torchrun, script, "worker", *args, str(tmp_path / "two")], env=cli_env,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr
    for part, names in (("builtin", 3), ("formats", 5)):
        single = _metrics(tmp_path / "one" / part)
        assert len(single) == names and _metrics(tmp_path / "two" / part) == single
    def at_end(run: str, name: str) -> str:  # results name the model by its run folder
        return (tmp_path / run / name).read_text().replace(str(tmp_path / run), "RUN")

    single = at_end("one", "at_end_rank0.json")
    assert json.loads(single)["zeroshot"]["num_samples"] == 32
    assert at_end("two", "at_end_rank0.json") == at_end("two", "at_end_rank1.json") == single  # on every rank
    written = json.loads(at_end("two", "eval_results.json"))  # by rank 0 only
    assert json.dumps(written, sort_keys=True) == single
    assert two.stdout.count("results: ") == 1


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(*sys.argv[2:6])
