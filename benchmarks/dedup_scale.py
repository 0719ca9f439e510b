"""Near-duplicate search at scale: exact (IndexFlatIP) against IVF with SQ8 and with flat lists,
time, memory and recall on planted near-duplicates, through ``data_prep.dedup_search`` exactly as
``vlp-prep dedup`` runs it (embeddings read from a float32 file on disk as a memmap).

The embeddings are synthetic and clustered like real image embeddings (1,000 centres; unrelated
images of one cluster at cosine ~0.5): 2% of them start a planted group with 1-3 noisy copies
(cosine 0.97-0.999 to each other: near-duplicates at the default threshold 0.95) and 1% have one
look-alike at cosine 0.92-0.946 (not a near-duplicate; most inside SQ8's re-check margin). The truth
is the planted groups: every member but the first in row order is to be removed, nothing else.
Each search runs in its own process; memory is the peak anonymous resident set (RssAnon, sampled
every 20 ms) above the process's level before the search, so the embedding file's page cache,
which the kernel can drop, is not counted. Also measured: the inner-product error of SQ8 and of
PQ (64 x 8 bit) codes, which is why the IVF lists hold SQ8 codes.

    python benchmarks/dedup_scale.py                       # exact at 50k; IVF at 50k and 200k (~4 min, 2 cores)
    python benchmarks/dedup_scale.py --n 1000000 --exact-n 20000

No anchor (no other dedup tool is installed). Last line: one JSON object with every run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
THRESHOLD = 0.95


def plan_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: planted group id or -1, noise of the copy (0 for a group's base), look-alike flag."""
    rng = np.random.default_rng(seed)
    group = np.full(n, -1, np.int64)
    tau = np.zeros(n, np.float32)
    order = rng.permutation(n)
    sizes = rng.integers(2, 5, size=max(1, n // 50))  # base + 1..3 copies
    used = 0
    for g, size in enumerate(sizes):
        rows = order[used:used + size]
        if len(rows) < size:
            break
        group[rows] = g
        tau[rows[1:]] = rng.uniform(0.03, 0.15, size - 1)
        used += size
    look = np.zeros(n, bool)
    n_look = n // 100
    pairs = order[used:used + 2 * n_look].reshape(-1, 2)
    g0 = len(sizes)
    for k, (a, b) in enumerate(pairs):  # own groups, never near-duplicates of each other
        group[[a, b]] = g0 + k
        tau[b] = rng.uniform(0.37, 0.41)
        look[b] = True
    return group, tau, look


def write_embeddings(path: Path, n: int, dim: int, seed: int = 0) -> dict[str, object]:
    """The planted set in ``path`` (float32 rows), written in chunks; returns its truth."""
    group, tau, look = plan_rows(n, seed)
    rng = np.random.default_rng(seed + 1)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    n_groups = int(group.max()) + 1 if (group >= 0).any() else 0
    noise = rng.standard_normal((n_groups, dim), dtype=np.float32) / np.sqrt(dim)
    base = centres[rng.integers(0, 1000, n_groups)] + noise
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    with open(path, "wb") as sink:
        for start in range(0, n, 65_536):
            stop = min(n, start + 65_536)
            g, t = group[start:stop], tau[start:stop]
            x = centres[rng.integers(0, 1000, stop - start)] + \
                rng.standard_normal((stop - start, dim), dtype=np.float32) / np.sqrt(dim)
            member = g >= 0
            x[member] = base[g[member]] + t[member, None] * rng.standard_normal((int(member.sum()), dim),
                                                                                dtype=np.float32) / np.sqrt(dim)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            sink.write(x.astype(np.float32).tobytes())
    truth = [int(r) for r in np.flatnonzero((group >= 0) & ~look)]
    first: dict[int, int] = {}
    removed = []
    for r in sorted(truth):
        if group[r] in first:
            removed.append(r)
        else:
            first[int(group[r])] = r
    return {"removed": removed, "look_alikes": int(look.sum())}


def _rss_anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def run_one(path: Path, n: int, dim: int, kind: str, codec: str, nprobe: int) -> dict[str, object]:
    """One search in this process: time, peak RssAnon above the start, the removed rows."""
    import faiss  # noqa: F401  (loaded before the baseline)

    from data_prep.dedup_options import IndexOptions, plan_index
    from data_prep.dedup_search import MARGIN, build_index, keep_first, neighbour_batches

    emb = np.memmap(path, dtype=np.float32, mode="r", shape=(n, dim))
    base = _rss_anon_kb()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _rss_anon_kb())

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    started = time.perf_counter()
    opts = IndexOptions(kind=kind, codec=codec, nprobe=nprobe)  # the steps of find_near_duplicates, timed apart
    plan = plan_index(n, dim, opts)
    index = build_index(emb, plan, opts)
    built, after_build = time.perf_counter(), _rss_anon_kb()
    forward: dict[int, int] = {}
    margin = MARGIN["exact" if plan.kind == "exact" else codec]
    removed = keep_first(neighbour_batches(index, emb, THRESHOLD, margin, opts, forward), forward)
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    peak[0] = max(peak[0], _rss_anon_kb())
    pairs = np.array(sorted(removed.items()), dtype=np.int64).reshape(-1, 2)
    sims = np.einsum("ij,ij->i", np.asarray(emb[pairs[:, 0]]), np.asarray(emb[pairs[:, 1]])) if len(pairs) else []
    return {"kind": plan.kind, "n": n, "nlist": plan.nlist, "nprobe": plan.nprobe, "train_sample": plan.train_sample,
            "seconds": round(seconds, 2), "build_seconds": round(built - started, 2),
            "peak_rss_anon_mb": round((peak[0] - base) / 1024, 1),
            "rss_anon_after_build_mb": round((after_build - base) / 1024, 1),
            "index_mb_planned": round(plan.index_bytes / 2**20, 1), "bytes_per_embedding": plan.bytes_per_embedding,
            "pairs_at_or_below_threshold": int((np.asarray(sims) <= THRESHOLD).sum()),
            "removed": sorted(removed)}


def code_errors(path: Path, n: int, dim: int) -> dict[str, float]:
    """Max and RMS inner-product error of SQ8 and PQ64x8 codes on 4,000 near pairs of the set."""
    import faiss

    emb = np.asarray(np.memmap(path, dtype=np.float32, mode="r", shape=(n, dim))[:min(n, 20_000)])
    m = min(4000, len(emb))
    rng = np.random.default_rng(0)
    q = emb[:m] + 0.1 * rng.standard_normal((m, dim), dtype=np.float32) / np.sqrt(dim)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = np.einsum("ij,ij->i", q, emb[:m])
    out: dict[str, float] = {}
    sq8 = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    for name, index in (("sq8", sq8),
                        ("pq64x8", faiss.IndexPQ(dim, 64, 8, faiss.METRIC_INNER_PRODUCT))):
        index.train(emb)
        approx = np.einsum("ij,ij->i", q, index.sa_decode(index.sa_encode(emb[:m])))
        err = approx - exact
        out[f"{name}_max_abs_ip_error"] = round(float(np.abs(err).max()), 5)
        out[f"{name}_rms_ip_error"] = round(float(np.sqrt((err ** 2).mean())), 5)
    return out


def score(run: dict[str, object], truth: set[int], exact: set[int] | None) -> dict[str, object]:
    removed = set(run.pop("removed"))  # type: ignore[arg-type]
    run["removed_count"] = len(removed)
    run["recall_vs_planted"] = round(len(removed & truth) / max(1, len(truth)), 5)
    run["removed_not_planted"] = len(removed - truth)
    if exact is not None:
        run["recall_vs_exact"] = round(len(removed & exact) / max(1, len(exact)), 5)
        run["same_as_exact"] = removed == exact
    return run


def _child(args: argparse.Namespace) -> None:
    print(json.dumps(run_one(Path(args.file), args.n, args.dim, args.kind, args.codec, args.nprobe)))


def _spawn(path: Path, n: int, dim: int, kind: str, codec: str = "sq8", nprobe: int = 16) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--child", "--file", str(path), "--n", str(n), "--dim", str(dim),
           "--kind", kind, "--codec", codec, "--nprobe", str(nprobe)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="embeddings of the IVF-only runs")
    parser.add_argument("--exact-n", type=int, default=50_000, help="embeddings of the exact-vs-IVF comparison")
    parser.add_argument("--dim", type=int, default=512, help="embedding width (ViT-B/32: 512)")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="ivf", help=argparse.SUPPRESS)
    parser.add_argument("--codec", default="sq8", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    started = time.perf_counter()
    runs: list[dict[str, object]] = []
    errors: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        plan = ((args.exact_n, ("exact", "ivf-sq8", "ivf-flat")), (args.n, ("ivf-sq8", "ivf-flat", "ivf-sq8@4")))
        for n, kinds in plan:
            path = Path(tmp) / f"emb-{n}.f32"
            truth = write_embeddings(path, n, args.dim)
            planted = set(truth["removed"])  # type: ignore[arg-type]
            exact = None
            for kind in kinds:
                kind, _, probe = kind.partition("@")
                family, _, codec = kind.partition("-")
                run = _spawn(path, n, args.dim, family, codec or "sq8", int(probe or args.nprobe))
                if kind == "exact":
                    exact = set(run["removed"])  # type: ignore[arg-type]
                runs.append(score(run, planted, exact))
                print(json.dumps(runs[-1]), file=sys.stderr)
            if n == args.exact_n:
                errors = code_errors(path, n, args.dim)
            path.unlink()
    per10m = {f"{k}_GB_at_10M": round(10_000_000 * b / 1e9, 2)
              for k, b in (("exact", 4 * args.dim), ("ivf_flat", 4 * args.dim + 8), ("ivf_sq8", args.dim + 8),
                           ("ivf_pq64", 64 + 8))}
    print(json.dumps({"benchmark": "dedup_scale", "dim": args.dim, "threshold": THRESHOLD, "runs": runs,
                      "code_errors": errors, "index_memory": per10m,
                      "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
