"""Peak memory and time of one training step with gradient caching (``train.accum_steps`` = k) at
the same global batch.

The model: open_clip's ViT-B-32 architecture (random init) as vlp builds it, 224 px images and
full-context texts (77 tokens), float32, the CLIP loss through ``compute_objective`` (what the
engine runs). One step is, for k = 1, one forward and backward of the global batch (the engine's
path without caching); for k > 1, ``vlp.train.grad_cache.cached_backward`` over k micro-batches of
global / k. For reference, k = 1 at each micro-batch size too: the memory gradient caching aims at
(one micro-batch's graph; the cached outputs of the whole batch are 2 x 64 x 512 floats here);
``rss_accumulate_mb`` is its peak after a second micro-batch is back-propagated onto the full
parameter gradients (the floor of any gradient accumulation, which k = 1 at the micro-batch size
stays under: it frees activations while it allocates the gradients), and ``above_accumulation_mb``
what caching at k holds above that floor (about 0; RSS varies by ~200 MB between runs at small
micro-batches). Each setting runs in a fresh subprocess, glibc's mmap threshold fixed at 1 MiB (a
freed tensor's pages return to the system, so the peak is that of live tensors): peak resident
memory (ru_maxrss) above the process's level once the model and the global batch's inputs exist,
and ``torch.cuda.max_memory_allocated`` above the same point on CUDA. Every setting includes the parameters' gradients (``param_grad_mb``,
allocated in the backward pass), which no batch size changes.

    python benchmarks/grad_cache_memory.py                         # global 64: k = 1, 4, 16; 2 threads
    python benchmarks/grad_cache_memory.py --global-batch 256 --ks 1,4,16,64 --device cuda

Last line: one JSON object, figures in MB and seconds; ``memory_ratio`` per k is the peak of k = 1
over the peak of k (above 1: caching saves memory), ``time_ratio`` the step time of k over k = 1
(the second forward pass costs about a third more). ``anchor`` is null: open_clip_train's
``--accum-freq`` (features of every micro-batch without graph, then each micro-batch again with
graph against the others' cached features, the loss computed k times) is not run here.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(k: int, micro: int, global_batch: int, threads: int, device: str) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    from vlp.config import LossTermConfig, ModelConfig
    from vlp.losses.registry import compute_objective
    from vlp.models.factory import build_model
    from vlp.train.grad_cache import cached_backward

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="ViT-B-32")).to(device).train()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(global_batch, 3, 224, 224, generator=g).to(device)
    texts = torch.randint(1, 49000, (global_batch, 77), generator=g).to(device)
    texts[:, -1] = 49407  # the end token last: the whole context is encoded
    batches = [{"image": images[i * micro:(i + 1) * micro], "text": texts[i * micro:(i + 1) * micro]} for i in range(k)]
    objective = functools.partial(compute_objective, terms=[LossTermConfig("clip")])
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if k == 1:
        losses = objective(model(**batches[0]))
        losses["total"].backward()
    else:
        losses, _ = cached_backward(model, batches, objective)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    record = {"k": k, "micro_batch": micro, "batch": k * micro, "seconds": round(seconds, 2),
              "loss": losses["total"].item(), "grad_norm": math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads)),
              "param_grad_mb": round(sum(g.numel() * g.element_size() for g in grads) / 2**20, 1),
              "rss_base_mb": round(base_kb / 1024, 1), "rss_step_mb": round((peak_kb - base_kb) / 1024, 1)}
    if cuda:
        record["cuda_step_mb"] = round((torch.cuda.max_memory_allocated() - cuda_base) / 2**20, 1)
    if k == 1 and micro < global_batch:  # the floor of any accumulation: a micro-batch on top of full gradients
        objective(model(image=images[micro:2 * micro], text=texts[micro:2 * micro]))["total"].backward()
        record["rss_accumulate_mb"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kb) / 1024, 1)
        if cuda:
            torch.cuda.synchronize()
            record["cuda_accumulate_mb"] = round((torch.cuda.max_memory_allocated() - cuda_base) / 2**20, 1)
    print(json.dumps(record))


def _run(k: int, micro: int, args: argparse.Namespace, device: str) -> dict:
    # glibc malloc with a fixed mmap threshold: a freed tensor's pages go back to the system at
    # once, so the peak RSS is that of live tensors (the default threshold grows after frees and
    # leaves freed activations in the heap, which makes the peak depend on the allocation order)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    proc = subprocess.run([sys.executable, __file__, "--child", f"{k},{micro}", "--global-batch", str(args.global_batch),
                           "--threads", str(args.threads), "--device", device],
                          capture_output=True, text=True, timeout=900, env=env)
    if proc.returncode:
        raise SystemExit(f"setting k={k}, micro-batch {micro} failed:\n{proc.stderr[-3000:]}")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"k={k} micro-batch {micro}: {record}", file=sys.stderr, flush=True)
    return record


def _summary(runs: dict, refs: dict, args: argparse.Namespace, device: str) -> dict:
    key = "cuda_step_mb" if device.startswith("cuda") else "rss_step_mb"
    full = runs["1"]
    return {
        "benchmark": "grad_cache_memory", "arch": "ViT-B-32", "image_size": 224, "context": 77,
        "global_batch": args.global_batch, "device": device, "threads": args.threads, "precision": "fp32",
        "memory": key, "cached": runs, "k1_at_micro_batch": refs,
        "memory_ratio": {k: round(full[key] / max(r[key], 1e-9), 3) for k, r in runs.items()},
        "time_ratio": {k: round(r["seconds"] / max(full["seconds"], 1e-9), 3) for k, r in runs.items()},
        "above_accumulation_mb": {k: round(r[key] - refs[str(r["micro_batch"])][key.replace("step", "accumulate")], 1)
                                  for k, r in runs.items() if k != "1"},
        "max_loss_diff": max(abs(r["loss"] - full["loss"]) for r in runs.values()),
        "max_grad_norm_rel_diff": max(abs(r["grad_norm"] - full["grad_norm"]) / full["grad_norm"] for r in runs.values()),
        "anchor": None,
        "anchor_note": "not run against an anchor (open_clip_train's --accum-freq does the two passes with the "
                       "loss computed k times); memory_ratio = peak at k=1 / peak at k, same global batch",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--ks", default="1,4,16", help="comma-separated accum_steps values (1 first)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.child:
        k, micro = (int(v) for v in args.child.split(","))
        _child(k, micro, args.global_batch, args.threads, device)
        return
    ks = [int(v) for v in args.ks.split(",")]
    if ks[0] != 1 or any(args.global_batch % k for k in ks):
        parser.error(f"--ks must start with 1 and divide --global-batch {args.global_batch}, got {args.ks}")
    runs = {str(k): _run(k, args.global_batch // k, args, device) for k in ks}
    refs = {str(args.global_batch // k): _run(1, args.global_batch // k, args, device) for k in ks[1:]}
    print(json.dumps(_summary(runs, refs, args, device)))


if __name__ == "__main__":
    main()
