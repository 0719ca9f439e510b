"""Training throughput of whole commands: our ``train.py`` against ``open_clip_train.main``, plus
model FLOP utilisation (MFU) of each.

Both commands train the same architecture from random init on the same shards (synth-shapes,
built here once and reused), with the same batch, precision, schedule (AdamW lr 1e-3, betas
0.9/0.98, eps 1e-6, weight decay 0.1, linear warmup over the first quarter of the steps then cosine
to 0, grad clip 1.0), seed, train crop
(random-resized, scale 0.9-1.0), torch threads and data workers; each logs every step, writes one
final checkpoint and nothing else (no evaluation, no trackers, no plots). open_clip_train runs
in the anchor environment ``.venv-anchor`` (webdataset<=0.2.86 and pandas over this project's
environment; see benchmarks/anchor_env.py), through a two-line wrapper that registers our tiny
model config with ``open_clip.add_model_config`` and then calls ``open_clip_train.main.main``.

Points (``--points``; default: all five):

- ``tiny_fp32``, ``tiny_bf16``: configs/tiny.yaml's ViT (width 192, 6 layers, 64 px) and text
  tower (width 256, 4 layers, context 32), batch ``--batch`` (64), 30 steps, each pair of commands
  run with ``--seeds`` seeds (3): a 30-step loss at lr 1e-3 moves by +-0.4 from seed to seed (and
  either tool sometimes diverges and collapses to ln(batch)), so one seed cannot say whether two
  final losses differ; the mean and standard deviation over seeds can.
- ``vit_b32_fp32``, ``vit_b32_bf16``: open_clip's ViT-B-32 (224 px, context 77), batch
  ``--vit-batch`` (16, so that a step takes about a second, not minutes, on 2 CPU cores), 5 steps,
  one seed: a speed point; its loss after 5 steps says nothing about training.
- ``vit_b32_bf16_b64``: the same at batch 64, 4 steps: per-step costs that do not grow with the
  batch (AdamW's pass over 151M float32 weights and moments, the weights' bf16 casts) weigh less,
  so it shows the bf16 utilisation at a batch nearer real training (256+ per device).

bf16 is autocast in both (ours ``train.precision=bf16``, theirs ``--precision amp_bf16``). On a
CPU without bf16 instructions (AVX2 only) bf16 matrix products are emulated and many times slower
than fp32: ``vit_b32_bf16`` then takes minutes per step (leave it out with ``--points``).

Measured for each command, from its own log: samples/s in the steady state = batch x (steps after
the first ``skip``) / (the sum of those steps' logged times) -- our run's metrics.jsonl
``samples_per_s`` (one line per step), open_clip_train's ``Train Epoch ... <samples/s>/s`` lines
(one per step). A step's logged time runs from the end of the previous step to the end of this one,
so it includes the wait for its batch in both. With several seeds, a tool's samples/s is the median
over its runs. Also the wall time of the whole command, and how much of it lay outside the logged
steps (start-up: imports, model, loader workers; the final checkpoint); every step's time of the
first seed is in the JSON (``ours_step_s``, ``anchor_step_s``) to judge the warm-up. The loss: the
first step's (both near ln(batch) at random init) and the mean of the last 5 steps' batch losses
(equal samples seen), per seed, with their mean and standard deviation, and
``final_loss_within_noise``: whether the two means differ by at most twice the standard error of
their difference (``final_loss_not_worse``: whether ours is at most that much above).

MFU = model FLOPs per step x steps/s / matmul peak. Model FLOPs: one CLIP training step (both
towers forward and backward, the contrastive loss) of the architecture at the batch, full text
context, counted with ``torch.utils.flop_counter`` on open_clip's model (benchmarks/flops.py): the
same number for both tools. (Ours runs the text tower only up to the batch's longest caption, so it
does less work than that; the saving shows as speed, and its MFU, like its samples/s, credits it.)
HFU (hardware FLOP utilisation) = the FLOPs a step really executes x steps/s / peak: for ours, counted
on vlp's own step with the shards' first ``batch`` captions (benchmarks/flops.py
``executed_step_flops``: trimmed text, last blocks for the pooled token only), for open_clip_train
the nominal count (it executes the full context). MFU credits the work ours avoids (and can pass
100% in fp32); HFU says how busy the matrix units are.
Peak: the best rate of square ``torch.matmul`` (512 up to 4096, as far as a call stays short; the
best of three operand layouts, since a CPU's bf16 kernel can be ten times faster in one) in the
point's dtype with the same thread count, measured here before the runs.

    python benchmarks/train_throughput.py                       # all points, under 10 minutes on 2 cores
    python benchmarks/train_throughput.py --points tiny_fp32 --steps 5 --skip 1 --seeds 1   # smoke
    python benchmarks/train_throughput.py --points tiny_fp32 tiny_bf16 vit_b32_fp32   # a CPU without bf16 units

Last line: one JSON object: per point ``{ours_samples_per_s, anchor_samples_per_s, ratio, ours_mfu,
anchor_mfu, ours_hfu, ours_final_loss, anchor_final_loss (means), ..._final_loss_std,
..._final_losses (per seed), final_loss_within_noise, model_gflop_per_step, wall times, ...}``,
``matmul_peak`` per dtype, ``threads``, ``workers`` and ``ratio`` = the smallest of the points'
ratios (ours / anchor samples/s; above 1: ours is faster).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

TINY_CONFIG = "configs/tiny.yaml"
ANCHOR_TINY_NAME = "vlp-tiny"  # the model config name our tiny architecture gets in open_clip
SHARD_SAMPLES = 500
ANCHOR_WRAPPER = ("import sys, open_clip; open_clip.add_model_config(sys.argv[1]); "
                  "from open_clip_train.main import main; main(sys.argv[2:])")
ANCHOR_LINE = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/\d+ .*?Batch \(t\): [\d.]+, ([\d.e+-]+)/s,.*? Loss: ([^\s]+)")


@dataclass(frozen=True)
class Point:
    model: str      # "tiny" or "vit_b32"
    precision: str  # "fp32" or "bf16"
    steps: int
    skip: int
    batch: int = 0  # 0: --batch (tiny) or --vit-batch (ViT-B/32)


POINTS = {
    "tiny_fp32": Point("tiny", "fp32", steps=30, skip=6),
    "tiny_bf16": Point("tiny", "bf16", steps=30, skip=6),
    "vit_b32_fp32": Point("vit_b32", "fp32", steps=5, skip=2),
    "vit_b32_bf16": Point("vit_b32", "bf16", steps=5, skip=2),
    "vit_b32_bf16_b64": Point("vit_b32", "bf16", steps=4, skip=2, batch=64),
}
DEFAULT_POINTS = list(POINTS)
LOSS_WINDOW = 5  # the final loss: mean of the last steps' batch losses
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def ensure_anchor_env() -> Path:
    """``.venv-anchor``, the environment benchmarks/data_loader.py defines for open_clip_train."""
    from data_loader import ensure_anchor_env as data_loader_anchor_env

    python = data_loader_anchor_env()
    check = subprocess.run([str(python), "-c", "import open_clip_train.main"], capture_output=True, text=True)
    if check.returncode != 0:
        sys.exit(f"{python} cannot import open_clip_train.main:\n{check.stderr[-2000:]}")
    return python


def ensure_shards(work: Path, samples: int, threads: int) -> Path:
    """A synth-shapes set of ``samples`` training images in shards of SHARD_SAMPLES (built once)."""
    out = work / f"shapes-{samples}"
    sizes = out / "train" / "sizes.json"
    if (out / "dataset.json").is_file() and sizes.is_file() and sum(json.loads(sizes.read_text()).values()) == samples:
        return out / "train"
    print(f"building {samples} synth-shapes training samples in {out} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "data_prep", "synth-shapes", "--out", str(out), "--train-samples",
                    str(samples), "--seed", "0", "--shard-samples", str(SHARD_SAMPLES), "--zeroshot-per-class", "2",
                    "--retrieval-samples", "16", "--compositional-samples", "16", "--workers", str(threads),
                    "--overwrite"], check=True, cwd=ROOT, capture_output=True)
    return out / "train"


def tiny_arch() -> Dict[str, Any]:
    from vlp.config import load_config

    return load_config(str(ROOT / TINY_CONFIG), []).model.arch


def write_anchor_model_config(work: Path) -> Path:
    """A folder holding ``vlp-tiny.json``: configs/tiny.yaml's architecture as an open_clip model config."""
    folder = work / "model-configs"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{ANCHOR_TINY_NAME}.json").write_text(json.dumps(tiny_arch(), indent=2))
    return folder


def commands(point: Point, name: str, batch: int, args: argparse.Namespace, shards: Path,
             anchor_python: Path, model_configs: Path, seed: int = 0) -> Tuple[List[str], List[str], Path, Path]:
    """(ours, anchor) command lines for ``point`` and where each writes its per-step log."""
    warmup = max(1, point.steps // 4)
    tars = sorted(p.name for p in shards.glob("shard-*.tar"))
    pattern = str(shards / f"shard-{{{tars[0][6:12]}..{tars[-1][6:12]}}}.tar")
    ours = [sys.executable, "train.py", "--config", TINY_CONFIG, f"data.train_shards={shards}",
            f"data.workers={args.workers}", "data.resize_scale=[0.9,1.0]", f"train.steps={point.steps}",
            f"train.batch_size={batch}", f"train.precision={point.precision}", f"train.threads={args.threads}",
            "train.log_every=1", f"train.checkpoint_every={point.steps}", f"train.output_dir={args.work / 'runs'}",
            f"train.run_name={name}", "train.report_to=none", "train.plot=false", f"train.seed={seed}", "eval.at_end=false",
            f"optim.lr={args.lr}", f"optim.warmup_steps={warmup}"]
    if point.model == "vit_b32":
        ours.append("model.arch=ViT-B-32")
    anchor = [str(anchor_python), "-c", ANCHOR_WRAPPER, str(model_configs),
              "--train-data", pattern, "--train-num-samples", str(point.steps * batch), "--dataset-type", "webdataset",
              "--model", ANCHOR_TINY_NAME if point.model == "tiny" else "ViT-B-32", "--batch-size", str(batch),
              "--precision", "fp32" if point.precision == "fp32" else "amp_bf16", "--workers", str(args.workers),
              "--epochs", "1", "--lr", str(args.lr), "--wd", "0.1", "--beta1", "0.9", "--beta2", "0.98",
              "--eps", "1e-6", "--warmup", str(warmup), "--grad-clip-norm", "1.0", "--save-frequency", "0",
              "--report-to", "", "--logs", str(args.work / "anchor-logs"), "--name", name,
              "--log-every-n-steps", "1", "--seed", str(seed)]
    return ours, anchor, args.work / "runs" / name / "metrics.jsonl", args.work / "anchor-logs" / name / "out.log"


def run_command(cmd: List[str], log: Path, threads: int) -> float:
    """Wall seconds of ``cmd`` run from the repository root on the CPU with ``threads`` threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="",
               PYTHONUNBUFFERED="1")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-4000:]}")
    return wall


def ours_steps(metrics: Path, batch: int) -> List[Tuple[int, float, float]]:
    """(step, seconds, loss) per step from our metrics.jsonl (train.log_every=1)."""
    rows = []
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        if "samples_per_s" in record:
            rows.append((int(record["step"]), batch / record["samples_per_s"], float(record["loss/total"])))
    return rows


def anchor_steps(log: Path, batch: int) -> List[Tuple[int, float, float]]:
    """(step, seconds, loss) per step from open_clip_train's out.log (--log-every-n-steps 1)."""
    rows = []
    for line in log.read_text().splitlines():
        match = ANCHOR_LINE.search(line)
        if match:
            seen, per_s, loss = match.groups()
            rows.append((int(seen) // batch, batch / float(per_s), float(loss)))
    return rows


def summarise(rows: List[Tuple[int, float, float]], steps: int, skip: int, batch: int, wall: float,
              who: str) -> Dict[str, Any]:
    if [r[0] for r in rows] != list(range(1, steps + 1)):
        sys.exit(f"{who}: expected one log line per step 1..{steps}, got steps {[r[0] for r in rows]}")
    steady = rows[skip:]
    seconds = sum(r[1] for r in steady)
    last = rows[-min(LOSS_WINDOW, steps):]
    return {"samples_per_s": batch * len(steady) / seconds, "step_s": [round(r[1], 3) for r in rows],
            "first_loss": rows[0][2], "final_loss": sum(r[2] for r in last) / len(last),
            "wall_s": wall, "outside_steps_s": wall - sum(r[1] for r in rows)}


def measure_point(name: str, point: Point, index: int, seeds: int, args: argparse.Namespace, shards: Path,
                  anchor_python: Path, model_configs: Path) -> Dict[str, Any]:
    """Both commands at ``point`` for seeds 0..seeds-1 (alternating which goes first): per tool the
    median samples/s, the first seed's step times and wall times, every seed's final loss."""
    batch = point_batch(point, args)
    runs: Dict[str, List[Dict[str, Any]]] = {"ours": [], "anchor": []}
    for seed in range(seeds):
        run_name = name if seed == 0 else f"{name}-seed{seed}"
        ours_cmd, anchor_cmd, ours_log, anchor_log = commands(point, run_name, batch, args, shards, anchor_python,
                                                              model_configs, seed)
        shutil.rmtree(ours_log.parent, ignore_errors=True)
        shutil.rmtree(anchor_log.parent, ignore_errors=True)
        for who in (("ours", "anchor") if (index + seed) % 2 == 0 else ("anchor", "ours")):
            cmd = ours_cmd if who == "ours" else anchor_cmd
            print(f"{name} seed {seed}: {who} ...", file=sys.stderr, flush=True)
            wall = run_command(cmd, args.work / "logs" / f"{run_name}-{who}.log", args.threads)
            rows = ours_steps(ours_log, batch) if who == "ours" else anchor_steps(anchor_log, batch)
            runs[who].append(summarise(rows, point.steps, point.skip, batch, wall, f"{name} {who} seed {seed}"))
    figures: Dict[str, Any] = {"batch": batch, "steps": point.steps, "skip": point.skip, "seeds": seeds,
                               "final_loss_steps": min(LOSS_WINDOW, point.steps), "precision": point.precision,
                               "model": point.model}
    for who, seen in runs.items():
        losses = [r["final_loss"] for r in seen]
        figures.update({f"{who}_samples_per_s": statistics.median(r["samples_per_s"] for r in seen),
                        f"{who}_final_losses": [round(x, 4) for x in losses],
                        f"{who}_final_loss": statistics.fmean(losses),
                        f"{who}_final_loss_std": statistics.stdev(losses) if len(losses) > 1 else None,
                        **{f"{who}_{k}": seen[0][k] for k in ("step_s", "first_loss", "wall_s", "outside_steps_s")}})
    if seeds > 1:  # the difference of the means against twice its standard error
        error = math.sqrt((figures["ours_final_loss_std"] ** 2 + figures["anchor_final_loss_std"] ** 2) / seeds)
        difference = figures["ours_final_loss"] - figures["anchor_final_loss"]
        figures.update(final_loss_within_noise=abs(difference) <= 2 * error, final_loss_not_worse=difference <= 2 * error)
    return figures


def first_captions(shards: Path, count: int, context: int) -> "torch.Tensor":
    """Token ids [count, context] of the first ``count`` captions of the shards (in shard order)."""
    import tarfile

    from vlp.data.tokenizers import build_tokenizer

    captions: List[str] = []
    for tar in sorted(shards.glob("shard-*.tar")):
        with tarfile.open(tar) as archive:
            for member in archive:
                if member.name.endswith(".txt") and len(captions) < count:
                    captions.append(archive.extractfile(member).read().decode())
        if len(captions) == count:
            break
    return build_tokenizer("open_clip", context)(captions)


def point_result(figures: Dict[str, Any], arch: Any, shards: Path, peak: Dict[str, Any]) -> Dict[str, Any]:
    """One point's JSON entry: speeds, their ratio, MFU (nominal FLOPs), ours' HFU (executed FLOPs), losses."""
    from flops import clip_step_flops, executed_step_flops

    batch = figures["batch"]
    nominal = clip_step_flops(arch, batch)
    texts = first_captions(shards, batch, nominal["context_length"])
    executed = executed_step_flops(arch, texts, nominal["image_size"][0])["total"]
    rate = peak["flop_per_s"] * batch  # FLOP/s at full peak, per sample/s
    per_tool = {f"{who}_{k}": round(figures[f"{who}_{k}"], 4 if "loss" in k else 2)
                for who in ("ours", "anchor") for k in ("samples_per_s", "final_loss", "first_loss")}
    return {
        **per_tool, "ratio": round(figures["ours_samples_per_s"] / figures["anchor_samples_per_s"], 3),
        "ours_mfu": round(nominal["total"] * figures["ours_samples_per_s"] / rate, 4),
        "anchor_mfu": round(nominal["total"] * figures["anchor_samples_per_s"] / rate, 4),
        "ours_hfu": round(executed * figures["ours_samples_per_s"] / rate, 4),
        "model_gflop_per_step": round(nominal["total"] / 1e9, 3), "ours_executed_gflop_per_step": round(executed / 1e9, 3),
        **{k: figures[k] for k in ("model", "precision", "batch", "steps", "skip", "seeds", "final_loss_steps")},
        **{k: figures[k] for k in figures if k.endswith(("final_losses", "final_loss_std", "within_noise", "not_worse"))},
        **{f"{who}_{k}": round(figures[f"{who}_{k}"], 1) for who in ("ours", "anchor") for k in ("wall_s", "outside_steps_s")},
        **{f"{who}_step_s": figures[f"{who}_step_s"] for who in ("ours", "anchor")},
    }


def point_batch(point: Point, args: argparse.Namespace) -> int:
    return point.batch or (args.batch if point.model == "tiny" else args.vit_batch)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", nargs="+", choices=list(POINTS), default=DEFAULT_POINTS)
    parser.add_argument("--steps", type=int, help="steps of every point (default: each point's own: "
                        + ", ".join(f"{k} {p.steps}" for k, p in POINTS.items()) + ")")
    parser.add_argument("--skip", type=int, help="first steps left out of samples/s (default: each point's own: "
                        + ", ".join(f"{k} {p.skip}" for k, p in POINTS.items()) + ")")
    parser.add_argument("--batch", type=int, default=64, help="batch of the tiny points")
    parser.add_argument("--vit-batch", type=int, default=16, help="batch of the ViT-B/32 points")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of both commands and of the peak")
    parser.add_argument("--workers", type=int, default=1, help="data loader workers of both commands")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of each tiny point (the ViT-B/32 points run one)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--samples", type=int, help="training samples in the shard set (default: enough for one "
                        "pass of the longest point, at least 2000)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vlp-bench-train-throughput"),
                        help="shards, run directories and logs (shards are reused)")
    return parser.parse_args()


def chosen_points(args: argparse.Namespace) -> Dict[str, Point]:
    """The points to measure with their steps and skipped warm-up steps."""
    points = {}
    for name in args.points:
        base = POINTS[name]
        steps = args.steps or base.steps
        steps = math.ceil(steps / args.workers) * args.workers  # open_clip_train runs whole batches per worker
        if args.skip is not None:
            skip = args.skip
        elif steps >= base.steps:  # the point's own
            skip = base.skip
        else:  # a shorter run (--steps): at most a quarter of it
            skip = min(base.skip, max(1, steps // 4)) if steps > 1 else 0
        if not 0 <= skip < steps:
            sys.exit(f"--skip must be in [0, steps) (steps {steps} for {name})")
        points[name] = Point(base.model, base.precision, steps, skip, base.batch)
    return points


def main() -> None:
    args = parse_args()

    import torch

    from flops import matmul_peak

    started = time.perf_counter()
    points = chosen_points(args)
    needed = max(p.steps * point_batch(p, args) for p in points.values())
    chunk = SHARD_SAMPLES * args.workers  # every loader worker of the anchor gets whole shards alike
    samples = args.samples or chunk * math.ceil(max(needed * 1.1, 2000) / chunk)
    if samples < needed:
        sys.exit(f"--samples {samples} is less than one pass of the longest point ({needed})")
    args.work.mkdir(parents=True, exist_ok=True)
    shards = ensure_shards(args.work, samples, args.threads)
    anchor_python = ensure_anchor_env()
    model_configs = write_anchor_model_config(args.work)

    peaks = {}
    for precision in sorted({p.precision for p in points.values()}):
        dtype = DTYPES[precision]
        peaks[dtype] = matmul_peak(getattr(torch, dtype), args.threads, repeats=3)
        print(f"matmul peak {dtype}: {peaks[dtype]['gflop_per_s']} GFLOP/s (n={peaks[dtype]['size']}, "
              f"{args.threads} threads)", file=sys.stderr, flush=True)
    archs = {"tiny": tiny_arch(), "vit_b32": "ViT-B-32"}

    summary: Dict[str, Any] = {"benchmark": "train_throughput", "threads": args.threads, "workers": args.workers,
                               "samples_in_shards": samples, "cpus": os.cpu_count(), "device": "cpu"}
    for index, (name, point) in enumerate(points.items()):
        seeds = args.seeds if point.model == "tiny" else 1
        figures = measure_point(name, point, index, seeds, args, shards, anchor_python, model_configs)
        summary[name] = result = point_result(figures, archs[point.model], shards, peaks[DTYPES[point.precision]])
        loss = {who: f"{result[f'{who}_final_loss']:.3f}" + (f" +- {result[f'{who}_final_loss_std']:.3f}"
                                                              if seeds > 1 else "") for who in ("ours", "anchor")}
        print(f"{name}: ours {result['ours_samples_per_s']:.1f} samples/s (MFU {result['ours_mfu']:.1%}, HFU "
              f"{result['ours_hfu']:.1%}, {result['ours_wall_s']:.0f} s whole), open_clip_train "
              f"{result['anchor_samples_per_s']:.1f} samples/s (MFU {result['anchor_mfu']:.1%}, "
              f"{result['anchor_wall_s']:.0f} s whole), ratio {result['ratio']}; loss after {point.steps} steps "
              f"({seeds} seed(s)): ours {loss['ours']}, open_clip_train {loss['anchor']}"
              + (f", within noise: {result['final_loss_within_noise']}, not worse: {result['final_loss_not_worse']}"
                 if seeds > 1 else ""), flush=True)
    summary["matmul_peak"] = {k: {key: v[key] for key in ("gflop_per_s", "size", "layout", "sizes_tried")}
                              for k, v in peaks.items()}
    summary["ratio"] = min(summary[name]["ratio"] for name in points)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
