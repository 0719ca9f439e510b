"""The options of ``vlp-prep dedup``'s near-duplicate search and the index they mean for N
embeddings (no numpy, no faiss: the CLI imports this to build its parser)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

INDEX_KINDS = ("auto", "exact", "ivf")
CODECS = ("sq8", "flat")
AUTO_EXACT_MAX = 50_000
"""``auto`` searches exactly up to this many embeddings, with IVF above (exact is O(N^2 d))."""
MIN_POINTS_PER_CENTROID = 40


@dataclass(frozen=True)
class IndexOptions:
    """How near-duplicates are searched (the ``--index`` family of options)."""

    kind: str = "auto"  # exact | ivf | auto (exact up to exact_max embeddings)
    nlist: int = 0  # IVF lists; 0 = round(4 * sqrt(N)), at most the training sample
    nprobe: int = 16  # IVF lists searched per query (= nlist: every list, the exact result)
    train_sample: int = 0  # embeddings drawn at random to train IVF; 0 = min(N, 40 * nlist)
    seed: int = 0  # seeds the training sample and k-means
    codec: str = "sq8"  # IVF list codes: sq8 (d + 8 bytes per embedding) or flat (4 d + 8)
    exact_max: int = AUTO_EXACT_MAX  # auto: exact search up to this many embeddings
    add_batch: int = 16_384  # embeddings added to the index per step
    query_batch: int = 2048  # embeddings queried per range search

    def validate(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"--index must be one of {', '.join(INDEX_KINDS)}, got {self.kind!r}")
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {self.codec!r}")
        for name in ("nlist", "train_sample", "exact_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("nprobe", "add_batch", "query_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class IndexPlan:
    """The index a search used (written to stats.json as ``index``)."""

    kind: str  # "exact" or "ivf-sq8" / "ivf-flat"
    embeddings: int
    dim: int
    nlist: int = 0
    nprobe: int = 0
    train_sample: int = 0
    bytes_per_embedding: int = 0  # in the index: codes plus the int64 id (IVF), the vector (exact)
    index_bytes: int = 0  # N * bytes_per_embedding plus the coarse centroids

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v or k in ("kind", "embeddings", "dim")}


def plan_index(n: int, dim: int, opts: IndexOptions) -> IndexPlan:
    """The exact or IVF configuration ``opts`` means for ``n`` embeddings of width ``dim``."""
    opts.validate()
    if opts.kind == "exact" or (opts.kind == "auto" and n <= opts.exact_max) or n == 0:
        return IndexPlan("exact", n, dim, bytes_per_embedding=4 * dim, index_bytes=4 * dim * n)
    nlist = opts.nlist or max(1, round(4 * math.sqrt(n)))
    train = min(n, opts.train_sample or MIN_POINTS_PER_CENTROID * nlist)
    nlist = min(nlist, train)
    per = (dim if opts.codec == "sq8" else 4 * dim) + 8
    return IndexPlan(f"ivf-{opts.codec}", n, dim, nlist, min(opts.nprobe, nlist), train, per,
                     per * n + 4 * dim * nlist)
