"""Eval suite speed and agreement: ``python -m eval run`` against clip_benchmark.

Both evaluate the same open_clip checkpoint (an open_clip architecture, random init with a fixed
seed, saved as a state-dict file: nothing is downloaded) on the same local CLIP_benchmark
webdataset folders (the built-in shapes sets: zero-shot classification over 16 classes x 7
templates, and retrieval with 5 captions per image as in COCO and Flickr30k), in float32 on this
machine's device, each with its own defaults (batch size, workers). clip_benchmark runs in its
own environment ``.venv-anchor-eval`` (it wants requests, scikit-learn and numpy<2.4; built on
first use) with ``--no_amp`` so that both compute in float32.

Timed, as whole commands a user would type (interpreter start, imports, model build included):
* anchor: ``clip_benchmark eval`` once per dataset (it runs one task per call);
* ours cold: one ``eval run`` over both datasets with an empty embedding cache;
* ours warm: the same command again (cache hit: the model is not even loaded).

Anchor and ours alternate for ``--rounds`` rounds and the best time of each is kept (the least
disturbed by other load on the machine); every round is listed. Every metric must agree within
1e-6. Goals: cold at most 0.5x clip_benchmark's wall time, warm at most 0.1x. Last line: one JSON
object; ``ratio`` = anchor time / our cold time (above 1: faster).

    python benchmarks/eval_speed.py                      # ViT-B-32, 160 + 150 images, 2 rounds
    python benchmarks/eval_speed.py --captions 0         # 2-3 captions per retrieval image
    python benchmarks/eval_speed.py --zeroshot-per-class 20 --retrieval 16   # image-dominated
    python benchmarks/eval_speed.py --arch ViT-S-32 --rounds 1   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from anchor_env import clip_benchmark_env  # noqa: E402


def make_data(out: Path, per_class: int, retrieval: int, captions: int, seed: int) -> tuple[Path, Path]:
    """The shapes zero-shot and retrieval folders (CLIP_benchmark layout), made once."""
    # 8+ shards per set, as published CLIP_benchmark sets have (clip_benchmark's 4 workers need 4)
    shard_size = max(1, min(16 * per_class, retrieval) // 8)
    stamp = out / f"done-{per_class}-{retrieval}-{captions}-{seed}-{shard_size}"
    if not stamp.exists():
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "data_prep", "synth-shapes", "--out", str(out), "--train-samples", "16",
               "--seed", str(seed), "--zeroshot-per-class", str(per_class), "--retrieval-samples", str(retrieval),
               "--compositional-samples", "16", "--shard-size", str(shard_size), "--retrieval-captions", str(captions)]
        subprocess.run(cmd, check=True, cwd=ROOT)
        stamp.write_text("")
    return out / "eval" / "zeroshot", out / "eval" / "retrieval"


def make_checkpoint(path: Path, arch: str, seed: int) -> Path:
    """A random-init open_clip ``arch`` state dict (seeded), saved once."""
    if path.exists():
        return path
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stdout[-4000:], file=sys.stderr)
        raise SystemExit(f"command failed ({done.returncode}): {' '.join(cmd)}")
    return elapsed


def run_anchor(python: Path, arch: str, ckpt: Path, data_root: Path, out: Path, env: dict[str, str]) -> tuple[float, dict]:
    """clip_benchmark on both datasets; (seconds, {dataset/task: metrics})."""
    out.mkdir(parents=True, exist_ok=True)
    seconds, metrics = 0.0, {}
    for name, task in (("zeroshot", "zeroshot_classification"), ("retrieval", "zeroshot_retrieval")):
        target = out / f"{name}.json"
        cmd = [str(python), "-m", "clip_benchmark.cli", "eval", "--model", arch, "--pretrained", str(ckpt),
               "--dataset", f"wds/{name}", "--dataset_root", str(data_root / "eval" / "{dataset_cleaned}"),
               "--task", task, "--no_amp", "--recall_k", "1", "5", "10", "--output", str(target)]
        seconds += timed(cmd, env)
        metrics[f"{name}/{task}"] = json.loads(target.read_text())["metrics"]
    return seconds, metrics


def run_ours(arch: str, ckpt: Path, zeroshot: Path, retrieval: Path, out: Path, cache: Path,
             env: dict[str, str]) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "eval", "run", "--model", str(ckpt), "--model-config", arch,
           "--tasks", "zeroshot,retrieval", "--datasets", f"{zeroshot},{retrieval}", "--output", str(out),
           "--cache-dir", str(cache), "--grid-queries", "0", "--no-progress"]
    seconds = timed(cmd, env)
    metrics = {}
    for name, task in (("zeroshot", "zeroshot_classification"), ("retrieval", "zeroshot_retrieval")):
        # eval run names its files <dataset>_<task as typed>; the datasets here are named after the tasks
        metrics[f"{name}/{task}"] = json.loads((out / f"{name}_{name}.json").read_text())["metrics"]
    return seconds, metrics


def max_metric_difference(ours: dict, anchor: dict) -> tuple[float, dict]:
    import math

    worst, diffs = 0.0, {}
    for key, theirs in anchor.items():
        for metric, value in theirs.items():
            mine = ours[key].get(metric)
            if mine is None:
                continue
            both_nan = isinstance(value, float) and math.isnan(value) and math.isnan(mine)
            diff = 0.0 if both_nan else abs(float(mine) - float(value))
            diffs[f"{key}/{metric}"] = diff
            worst = max(worst, diff)
    return worst, diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture name")
    parser.add_argument("--zeroshot-per-class", type=int, default=10, help="images per class (16 classes)")
    parser.add_argument("--retrieval", type=int, default=150, help="retrieval images")
    parser.add_argument("--captions", type=int, default=5, help="captions per retrieval image")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best time of each is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=str(ROOT / "data" / "bench-eval"), help="data, checkpoint, outputs")
    args = parser.parse_args()

    work = Path(args.work)
    zeroshot, retrieval = make_data(work / "data", args.zeroshot_per_class, args.retrieval, args.captions, args.seed)
    ckpt = make_checkpoint(work / f"{args.arch}-seed{args.seed}.pt", args.arch, args.seed)
    anchor_python = clip_benchmark_env()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")

    rounds = []
    for r in range(args.rounds):
        anchor_s, anchor_metrics = run_anchor(anchor_python, args.arch, ckpt, work / "data", work / "out-anchor", env)
        cache = work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(work / "out-ours", ignore_errors=True)
        cold_s, cold_metrics = run_ours(args.arch, ckpt, zeroshot, retrieval, work / "out-ours", cache, env)
        warm_s, warm_metrics = run_ours(args.arch, ckpt, zeroshot, retrieval, work / "out-ours-warm", cache, env)
        worst, diffs = max_metric_difference(cold_metrics, anchor_metrics)
        warm_worst, _ = max_metric_difference(warm_metrics, anchor_metrics)
        rounds.append({"clip_benchmark_s": round(anchor_s, 2), "ours_cold_s": round(cold_s, 2),
                       "ours_warm_s": round(warm_s, 2), "max_metric_abs_diff": max(worst, warm_worst)})
        print(json.dumps({"round": r, **rounds[-1]}), file=sys.stderr, flush=True)
    print(json.dumps(diffs, indent=1), file=sys.stderr)
    anchor_s = min(r["clip_benchmark_s"] for r in rounds)
    cold_s = min(r["ours_cold_s"] for r in rounds)
    warm_s = min(r["ours_warm_s"] for r in rounds)
    worst = max(r["max_metric_abs_diff"] for r in rounds)
    result = {
        "benchmark": "eval_speed",
        "arch": args.arch,
        "images": {"zeroshot": 16 * args.zeroshot_per_class, "retrieval": args.retrieval},
        "texts": {"prompts": 16 * 7,
                  "captions": args.retrieval * args.captions if args.captions else "2-3 per image"},
        "clip_benchmark_s": anchor_s,
        "ours_cold_s": cold_s,
        "ours_warm_s": warm_s,
        "cold_fraction": round(cold_s / anchor_s, 3),
        "warm_fraction": round(warm_s / anchor_s, 3),
        "ratio": round(anchor_s / cold_s, 3),
        "ratio_warm": round(anchor_s / warm_s, 3),
        "max_metric_abs_diff": worst,
        "metrics_identical_1e-6": worst <= 1e-6,
        "goal_cold_met": cold_s <= 0.5 * anchor_s,
        "goal_warm_met": warm_s <= 0.1 * anchor_s,
        "rounds": rounds,
        "anchor_metrics": anchor_metrics,
        "ours_metrics": cold_metrics,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
