"""Near-duplicate search over L2-normalised embeddings: exact or IVF, one keep rule.

Two images are near-duplicates when the cosine similarity (inner product) of their embeddings is
above ``threshold``. Candidate pairs come from a faiss range search slightly below the threshold
(``exact``: ``IndexFlatIP``; ``ivf``: ``IndexIVFScalarQuantizer`` with 8-bit codes, k-means
trained on a random sample) and every candidate is re-checked with the float32 inner product of
the two stored embeddings, so both paths apply the same rule to the same numbers and no pair at or
below the threshold is ever reported. ``embeddings`` may be an ``np.memmap``: the index is filled
and queried ``add_batch`` / ``query_batch`` rows at a time, so memory is the index plus one batch.

Why SQ8: one embedding costs ``d + 8`` bytes in the lists (8-bit code per dimension plus its
int64 id) against ``4 d + 8`` for ``IndexIVFFlat``, and its inner-product error (about 1e-3 at
d = 512) is far inside the re-check margin, so it finds what IVF-Flat finds at a quarter of the
memory; product quantisation would be smaller still but errs by a few hundredths of cosine, the
width of the band that separates a near-duplicate from a look-alike.

Keep rule (the same for both paths, and independent of the order the index was filled in and of
the batch sizes): going through the samples in index order, sample ``i`` is removed when an
earlier *kept* sample ``e`` is its near-duplicate, found by either query (``e``'s or ``i``'s); it
is recorded as a duplicate of the first kept sample whose query found it, else of the first kept
sample its own query found. So the first of each group stays and no two kept samples are
near-duplicates that the search found. Samples already known to be removed are not queried.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from data_prep.dedup_options import IndexOptions, IndexPlan, plan_index

MARGIN = {"exact": 1e-4, "flat": 1e-4, "sq8": 0.02}
"""How far below the threshold candidates are gathered before the exact re-check (SQ8 errs ~1e-3)."""
_VERIFY_CHUNK = 1 << 18


def _rows(emb: np.ndarray, start: int, stop: int) -> np.ndarray:
    return np.ascontiguousarray(emb[start:stop], dtype=np.float32)


def build_index(emb: np.ndarray, plan: IndexPlan, opts: IndexOptions, progress: bool = False) -> Any:
    """The filled faiss index of ``plan`` over ``emb`` (read ``opts.add_batch`` rows at a time)."""
    import faiss

    n, dim = emb.shape
    if plan.kind == "exact":
        index = faiss.IndexFlatIP(dim)
        for start in tqdm(range(0, n, opts.add_batch), desc="index", unit="batch", disable=not progress):
            index.add(_rows(emb, start, min(n, start + opts.add_batch)))
        return index
    quantizer = faiss.IndexFlatIP(dim)
    if opts.codec == "sq8":
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, plan.nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFFlat(quantizer, dim, plan.nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = opts.seed
    index.cp.spherical = True  # unit-norm centroids for inner-product assignment
    index.cp.min_points_per_centroid = 1  # a small set trains on what there is, quietly
    if progress:
        tqdm.write(f"dedup: training IVF ({plan.nlist} lists) on {plan.train_sample} of {n} embeddings")
    sample = np.sort(np.random.default_rng(opts.seed).choice(n, size=plan.train_sample, replace=False))
    index.train(np.ascontiguousarray(emb[sample], dtype=np.float32))  # the sample is freed once trained
    index.nprobe = plan.nprobe
    _fill_ivf(index, emb, opts.add_batch, progress)
    return index


def _fill_ivf(index: Any, emb: np.ndarray, batch: int, progress: bool) -> None:
    """Add every row of ``emb`` to the trained IVF ``index`` (ids = row numbers) in two passes:
    assign each row to its list (4 bytes a row kept), then, with every list allocated once at its
    final size, encode and append batch by batch. ``add`` alone grows each list's storage by
    doubling, which measured 1.3-1.6x the codes' size; this way the lists hold just the codes."""
    import faiss

    n = emb.shape[0]
    steps = range(0, n, batch)
    lists = np.empty(n, dtype=np.int32)
    for start in tqdm(steps, desc="assign", unit="batch", disable=not progress):
        stop = min(n, start + batch)
        lists[start:stop] = index.quantizer.search(_rows(emb, start, stop), 1)[1][:, 0]
    for list_no, count in enumerate(np.bincount(lists, minlength=index.nlist).tolist()):
        if count:  # grow from empty to exactly count entries, then back to size 0: capacity stays
            index.invlists.resize(list_no, count)
            index.invlists.resize(list_no, 0)
    for start in tqdm(steps, desc="index", unit="batch", disable=not progress):
        stop = min(n, start + batch)
        x = _rows(emb, start, stop)
        ids = np.arange(start, stop, dtype=np.int64)
        assigned = lists[start:stop].astype(np.int64)
        index.add_core(stop - start, faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(assigned))


def _verified(emb: np.ndarray, queries: np.ndarray, rows: np.ndarray, ids: np.ndarray,
              threshold: float) -> np.ndarray:
    """The mask of candidate pairs (queries[rows], emb[ids]) whose inner product is > threshold."""
    keep = np.zeros(len(ids), dtype=bool)
    for lo in range(0, len(ids), _VERIFY_CHUNK):
        hi = min(len(ids), lo + _VERIFY_CHUNK)
        wanted, where = np.unique(ids[lo:hi], return_inverse=True)
        others = np.asarray(emb[wanted], dtype=np.float32)[where]
        sims = np.einsum("ij,ij->i", queries[rows[lo:hi]], others)
        keep[lo:hi] = sims > np.float32(threshold)
    return keep


def neighbour_batches(index: Any, emb: np.ndarray, threshold: float, margin: float, opts: IndexOptions,
                      skip: dict[int, int], progress: bool = False) -> Iterator[tuple[int, int, dict[int, np.ndarray]]]:
    """(start, stop, {row: its verified neighbours' rows, ascending, itself left out}) per query
    batch, in order; rows without a neighbour are left out of the dict, and rows in ``skip`` when
    their batch is searched are not queried (``skip`` is read lazily, batch by batch)."""
    n = emb.shape[0]
    for start in tqdm(range(0, n, opts.query_batch), desc="search", unit="batch", disable=not progress):
        stop = min(n, start + opts.query_batch)
        asked = np.array([i for i in range(start, stop) if i not in skip], dtype=np.int64)
        if len(asked) == 0:
            yield start, stop, {}
            continue
        whole = len(asked) == stop - start
        queries = _rows(emb, start, stop) if whole else np.ascontiguousarray(emb[asked], dtype=np.float32)
        lims, _, ids = index.range_search(queries, float(threshold - margin))
        rows = np.repeat(np.arange(len(asked)), np.diff(lims).astype(np.int64))
        ids = ids.astype(np.int64, copy=False)
        other = ids != asked[rows]
        rows, ids = rows[other], ids[other]
        good = _verified(emb, queries, rows, ids, threshold)
        rows, ids = rows[good], ids[good]
        order = np.lexsort((ids, rows))
        rows, ids = rows[order], ids[order]
        firsts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else np.zeros(0, np.int64)
        ends = np.r_[firsts[1:], len(rows)]
        yield start, stop, {int(asked[rows[a]]): ids[a:b] for a, b in zip(firsts.tolist(), ends.tolist())}


def keep_first(batches: Iterator[tuple[int, int, dict[int, np.ndarray]]], forward: dict[int, int]) -> dict[int, int]:
    """The keep rule over ``neighbour_batches``, which must be given ``forward`` as its ``skip``
    (this fills it: {later row: first kept row whose query found it}); returns {removed row: kept
    row it duplicates}."""
    removed: dict[int, int] = {}
    for start, stop, found in batches:
        for i in range(start, stop):
            if i in forward:
                removed[i] = forward.pop(i)
                continue
            near = found.get(i)
            if near is None:
                continue
            earlier = next((e for e in near.tolist() if e < i and e not in removed), None)
            if earlier is not None:
                removed[i] = earlier
                continue
            for j in near[near > i].tolist():
                forward.setdefault(j, i)
    return removed


def find_near_duplicates(emb: np.ndarray, threshold: float, opts: IndexOptions | None = None,
                         progress: bool = False) -> tuple[dict[int, int], IndexPlan]:
    """({removed row: kept row it duplicates}, the index used) for embeddings ``emb`` [N, d]."""
    opts = opts or IndexOptions()
    n, dim = emb.shape
    plan = plan_index(n, dim, opts)
    if n == 0:
        return {}, plan
    index = build_index(emb, plan, opts, progress)
    margin = MARGIN["exact" if plan.kind == "exact" else opts.codec]
    forward: dict[int, int] = {}
    removed = keep_first(neighbour_batches(index, emb, threshold, margin, opts, forward, progress), forward)
    return removed, plan
