"""Peak memory of one training forward + backward with and without gradient checkpointing.

The model: open_clip's ViT-B-32 architecture (random init) as vlp builds it, ``model.grad_checkpointing``
off and on (open_clip's ``set_grad_checkpointing`` in both towers), batch 64 of 224 px images and
full-context texts (77 tokens: both settings run the text tower over the same length), float32,
the CLIP loss. Each setting runs in a fresh subprocess: peak resident memory (ru_maxrss) above
the process's level once the model and inputs exist, and ``torch.cuda.max_memory_allocated``
above the same point on CUDA. Checkpointing trades memory for a second forward of each block in
the backward pass, so the time of the step is reported too.

    python benchmarks/grad_checkpointing.py                  # batch 64, 2 threads
    python benchmarks/grad_checkpointing.py --batch 32 --device cuda

Last line: one JSON object; ``ratio`` is peak memory without / with checkpointing (above 1:
checkpointing saves memory; on CUDA the ratio is of CUDA memory). There is no external anchor:
open_clip's checkpointing is what runs in both, so ``anchor`` is null.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(checkpointing: bool, batch: int, threads: int, device: str) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    from vlp.config import ModelConfig
    from vlp.losses.contrastive import clip_loss
    from vlp.models.factory import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="ViT-B-32", grad_checkpointing=checkpointing)).to(device).train()
    images = torch.randn(batch, 3, 224, 224, device=device)
    texts = torch.randint(1, 49000, (batch, 77), device=device)
    texts[:, -1] = 49407  # the end token last: the whole context is encoded
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = model(images, texts)
    loss = clip_loss(out["image_emb"], out["text_emb"], out["logit_scale"])
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    record = {"grad_checkpointing": checkpointing, "seconds": round(seconds, 2), "loss": round(loss.item(), 6),
              "rss_base_mb": round(base_kb / 1024, 1), "rss_step_mb": round((peak_kb - base_kb) / 1024, 1)}
    if cuda:
        record["cuda_step_mb"] = round((torch.cuda.max_memory_allocated() - cuda_base) / 2**20, 1)
    print(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--child", choices=["off", "on"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.child:
        _child(args.child == "on", args.batch, args.threads, device)
        return
    runs = {}
    for setting in ("off", "on"):
        proc = subprocess.run([sys.executable, __file__, "--child", setting, "--batch", str(args.batch),
                               "--threads", str(args.threads), "--device", device],
                              capture_output=True, text=True, check=True, timeout=600)
        runs[setting] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"grad_checkpointing {setting}: {runs[setting]}", file=sys.stderr, flush=True)
    key = "cuda_step_mb" if device.startswith("cuda") else "rss_step_mb"
    summary = {
        "benchmark": "grad_checkpointing", "arch": "ViT-B-32", "batch": args.batch, "device": device,
        "threads": args.threads, "without": runs["off"], "with": runs["on"], "memory": key,
        "ratio": round(runs["off"][key] / max(runs["on"][key], 1e-9), 3),
        "time_ratio": round(runs["on"]["seconds"] / max(runs["off"]["seconds"], 1e-9), 3),
        "same_loss": runs["off"]["loss"] == runs["on"]["loss"],
        "anchor": None,
        "anchor_note": "no external anchor: both settings run open_clip's own towers; ratio = without / with",
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
