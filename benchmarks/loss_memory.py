"""Peak memory and time of the contrastive loss, forward + backward, at very large batch.

Ours: vlp.losses.chunked.chunked_clip_loss (logits a block at a time, recomputed in backward).
Anchor: open_clip.loss.ClipLoss (dense logits), on the same inputs. Each (implementation, batch)
runs in a fresh subprocess: peak resident memory above the process's level once the inputs exist
(ru_maxrss), and wall time of one forward + backward after a small warm-up. The anchor is skipped
(reported as null) where its dense logits would not fit in this machine's memory.

    python benchmarks/loss_memory.py                      # B = 8192, 16384, 65536; D = 512; 2 threads
    python benchmarks/loss_memory.py --batches 8192 --dim 256

Last line: one JSON object; ``ratio`` is anchor time / our time at the largest batch both ran
(above 1: ours is faster), ``memory_ratio`` the same for peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

DENSE_BYTES_PER_LOGIT = 16  # logits both ways + their softmax/grad buffers, float32 (measured ~4.3 GB at 16384)


def _child(impl: str, batch: int, dim: int, threads: int, chunk: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    image = torch.randn(batch, dim)
    image /= image.norm(dim=1, keepdim=True)
    text = torch.randn(batch, dim)
    text /= text.norm(dim=1, keepdim=True)
    image.requires_grad_(), text.requires_grad_()
    scale = torch.tensor(14.0, requires_grad=True)
    if impl == "vlp":
        from vlp.losses.chunked import chunked_clip_loss

        def loss_fn(i, t, s):
            return chunked_clip_loss(i, t, s, chunk=chunk)
    else:
        from open_clip.loss import ClipLoss

        anchor = ClipLoss()

        def loss_fn(i, t, s):
            return anchor(i, t, s)
    warm = loss_fn(image[:256], text[:256], scale)  # import/allocator warm-up on a small batch
    warm.backward()
    image.grad = text.grad = scale.grad = None
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    loss = loss_fn(image, text, scale)
    loss.backward()
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"impl": impl, "batch": batch, "seconds": round(seconds, 3), "loss": loss.item(),
                      "peak_above_baseline_gb": round((peak_kb - base_kb) / 2**20, 3),
                      "grad_norm": round(float(image.grad.norm()), 6)}))


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[8192, 16384, 65536])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]), args.dim, args.threads, args.chunk)
        return

    rows = []
    for batch in args.batches:
        for impl in ("vlp", "open_clip"):
            need = DENSE_BYTES_PER_LOGIT * batch * batch
            if impl == "open_clip" and need > 0.8 * _available_bytes():
                print(f"{impl:9s} B={batch:6d}  skipped: dense logits need ~{need / 2**30:.0f} GB, "
                      f"{_available_bytes() / 2**30:.0f} GB available", flush=True)
                rows.append({"impl": impl, "batch": batch, "seconds": None, "peak_above_baseline_gb": None,
                             "skipped": f"needs ~{need / 2**30:.0f} GB"})
                continue
            proc = subprocess.run([sys.executable, __file__, "--dim", str(args.dim), "--threads", str(args.threads),
                                   "--chunk", str(args.chunk), "--child", impl, str(batch)],
                                  capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            if proc.returncode != 0:
                rows.append({"impl": impl, "batch": batch, "error": proc.stderr.strip().splitlines()[-1:]})
                print(f"{impl:9s} B={batch:6d}  failed: {proc.stderr.strip()[-300:]}", flush=True)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{impl:9s} B={batch:6d}  {row['seconds']:8.2f} s  peak +{row['peak_above_baseline_gb']:.3f} GB  "
                  f"loss {row['loss']:.6f}", flush=True)
    both = [b for b in args.batches
            if all(any(r["impl"] == i and r["batch"] == b and r.get("seconds") for r in rows) for i in ("vlp", "open_clip"))]
    summary = {"benchmark": "loss_memory", "dim": args.dim, "threads": args.threads, "chunk": args.chunk, "rows": rows}
    if both:
        b = max(both)
        ours = next(r for r in rows if r["impl"] == "vlp" and r["batch"] == b)
        anchor = next(r for r in rows if r["impl"] == "open_clip" and r["batch"] == b)
        summary.update({"compared_at_batch": b, "ratio": round(anchor["seconds"] / ours["seconds"], 3),
                        "memory_ratio": round(anchor["peak_above_baseline_gb"] / max(ours["peak_above_baseline_gb"], 1e-3), 2),
                        "loss_abs_diff": abs(anchor["loss"] - ours["loss"])})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
