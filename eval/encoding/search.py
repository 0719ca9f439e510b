"""Exact top-k search by inner product, and retrieval recall@k computed from it.

``eval.metrics.retrieval_recall`` needs the full [texts, images] score matrix; at a few million
items that matrix no longer fits. Here the scores are produced in chunks (torch) or by faiss
(``IndexFlatIP``, or ``IndexIVFFlat`` with inner product for galleries over
:data:`IVF_THRESHOLD` items) and only the top k per query is kept.

Scores are raw inner products ``query . item``: pass L2-normalised embeddings for cosine
similarity (as ``eval.tasks.retrieval`` does).

Ties. ``retrieval_recall`` calls ``torch.topk(k)`` (CPU) on each full score row, once per k, and
which of several equal scores straddling the k-th place it keeps is up to PyTorch. A search
backend breaks such ties its own way (faiss, IVF, chunked torch may all differ), so
:func:`search_recall` does not trust the ranking where the k-th and the (k+1)-th score are
equal or closer than ``tie_rtol * |query| * max|item|`` (rounding of a different summation
order typically stays far below that): for those queries only, it recomputes the full score row the way
``retrieval_recall`` sees it (``texts @ images.T``, its row or its column, in float32 on the CPU)
and calls ``torch.topk(k)`` on it, exactly as ``eval.metrics.hit_at_k`` does. Every other query
has an unambiguous top-k set, which any exact backend finds. Hence ``search_recall`` equals
``retrieval_recall(texts @ images.T, ...)`` exactly (ties included) for the exact backends
(``torch``, ``faiss-flat``, and ``faiss-ivf`` with ``nprobe == nlist``); a smaller ``nprobe``
makes IVF approximate (a warning says so).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
import torch

from eval.metrics import RECALL_KS

log = logging.getLogger(__name__)

FLAT_THRESHOLD: int = 100_000  # "auto" uses faiss (exact, flat inner product) above this many gallery items
IVF_THRESHOLD: int = 1_000_000  # "auto" uses IVF above this many gallery items
BLOCK_SCORES: int = 1 << 26  # scores per block when chunk is None (256 MiB of float32)
DEFAULT_NPROBE: int = 32
BACKENDS: tuple[str, ...] = ("auto", "torch", "faiss-flat", "faiss-ivf")
TopK = tuple[torch.Tensor, torch.Tensor]  # scores [Q, k] float32, indices [Q, k] int64 (-1: none)


def _check_pair(queries: torch.Tensor, gallery: torch.Tensor) -> None:
    if queries.dim() != 2 or gallery.dim() != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"expected [Q, D] queries and [N, D] gallery, got {tuple(queries.shape)} "
                         f"and {tuple(gallery.shape)}")


def _empty(queries: torch.Tensor) -> TopK:
    q = queries.shape[0]
    return torch.zeros(q, 0, dtype=torch.float32), torch.zeros(q, 0, dtype=torch.long)


def query_chunk(gallery_size: int, chunk: int | None) -> int:
    """Queries per score block: ``chunk``, or (None) as many as keep a block under
    :data:`BLOCK_SCORES` scores (at least 1, at most 4096)."""
    if chunk is None:
        return max(1, min(4096, BLOCK_SCORES // max(gallery_size, 1)))
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return int(chunk)


def topk_torch(queries: torch.Tensor, gallery: torch.Tensor, k: int, chunk: int | None = None) -> TopK:
    """Top ``min(k, N)`` gallery items per query by ``queries @ gallery.T``, best first.

    The score matrix is built ``chunk`` queries at a time (never [Q, N] at once; default
    :func:`query_chunk`), in the inputs' dtype and on their device, and ranked there in float32.
    Returns CPU (scores float32, indices int64).
    """
    _check_pair(queries, gallery)
    chunk = query_chunk(gallery.shape[0], chunk)
    k = min(int(k), gallery.shape[0])
    if k <= 0 or queries.shape[0] == 0:
        return _empty(queries)
    scores, indices = [], []
    for start in range(0, queries.shape[0], chunk):
        block = (queries[start : start + chunk] @ gallery.T).float()
        top = block.topk(k, dim=1, largest=True, sorted=True)
        scores.append(top.values.cpu())
        indices.append(top.indices.cpu())
    return torch.cat(scores), torch.cat(indices)


def _as_faiss(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().float().cpu().numpy(), dtype=np.float32)


def default_nlist(n: int) -> int:
    """IVF lists for ``n`` items: about 4 sqrt(n), with at least 39 training points per list."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def ivf_params(n: int, nlist: int | None = None, nprobe: int | None = None) -> tuple[int, int]:
    """(nlist, nprobe) an IVF search over ``n`` items uses: ``nlist`` default :func:`default_nlist`,
    ``nprobe`` default min(nlist, :data:`DEFAULT_NPROBE`); ValueError when out of range."""
    nlist = default_nlist(n) if nlist is None else int(nlist)
    if not 1 <= nlist <= n:
        raise ValueError(f"nlist must be in [1, {n}] (gallery size), got {nlist}")
    nprobe = min(nlist, DEFAULT_NPROBE) if nprobe is None else int(nprobe)
    if not 1 <= nprobe <= nlist:
        raise ValueError(f"nprobe must be in [1, nlist={nlist}], got {nprobe}")
    return nlist, nprobe


def topk_faiss(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
) -> TopK:
    """Top ``min(k, N)`` items per query with faiss: ``"flat"`` (``IndexFlatIP``, exact) or
    ``"ivf"`` (``IndexIVFFlat``, inner product; ``nlist`` lists, default :func:`default_nlist`;
    ``nprobe`` lists searched, default min(nlist, 32); exact only when ``nprobe == nlist``).

    Returns CPU (scores float32, indices int64); an index of -1 (score -inf) means IVF found
    fewer than k items in the lists it probed.
    """
    import faiss  # local: only this backend needs it

    _check_pair(queries, gallery)
    n, dim = gallery.shape
    k = min(int(k), n)
    if k <= 0 or queries.shape[0] == 0:
        return _empty(queries)
    base = _as_faiss(gallery)
    if index == "flat":
        searcher = faiss.IndexFlatIP(dim)
    elif index == "ivf":
        nlist, nprobe = ivf_params(n, nlist, nprobe)
        if nprobe < nlist:
            log.warning("IVF search with nprobe=%d < nlist=%d is approximate", nprobe, nlist)
        quantizer = faiss.IndexFlatIP(dim)
        searcher = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        searcher.train(base)
        searcher.nprobe = nprobe
    else:
        raise ValueError(f"unknown faiss index {index!r}; choose 'flat' or 'ivf'")
    searcher.add(base)
    scores, indices = searcher.search(_as_faiss(queries), k)
    scores_t = torch.from_numpy(scores).float()
    indices_t = torch.from_numpy(indices).long()
    scores_t[indices_t < 0] = -math.inf
    return scores_t, indices_t


def resolve_backend(backend: str, gallery_size: int) -> str:
    """``"auto"``: exact ``"torch"`` up to :data:`FLAT_THRESHOLD` gallery items, exact
    ``"faiss-flat"`` up to :data:`IVF_THRESHOLD`, ``"faiss-ivf"`` above."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown search backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if gallery_size > IVF_THRESHOLD:
            return "faiss-ivf"
        return "faiss-flat" if gallery_size > FLAT_THRESHOLD else "torch"
    return backend


def search_plan(backend: str, gallery_size: int, nlist: int | None = None,
                nprobe: int | None = None) -> dict[str, Any]:
    """What :func:`topk` runs for ``backend`` over ``gallery_size`` items, as a JSON-ready dict:
    ``backend`` (resolved, see :func:`resolve_backend`), ``gallery``, for ``faiss-ivf`` its
    ``nlist`` and ``nprobe``, and ``exact`` (False only for IVF probing fewer lists than it has)."""
    resolved = resolve_backend(backend, gallery_size)
    plan: dict[str, Any] = {"backend": resolved, "gallery": int(gallery_size)}
    if resolved == "faiss-ivf" and gallery_size > 0:
        plan["nlist"], plan["nprobe"] = ivf_params(gallery_size, nlist, nprobe)
    plan["exact"] = plan.get("nprobe") == plan.get("nlist")
    return plan


def topk(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    backend: str = "auto",
    chunk: int | None = None,
    nlist: int | None = None,
    nprobe: int | None = None,
) -> TopK:
    """Top-k search with the backend named (see :data:`BACKENDS`, :func:`search_plan`)."""
    plan = search_plan(backend, gallery.shape[0], nlist, nprobe)
    if plan["backend"] == "torch":
        return topk_torch(queries, gallery, k, chunk=chunk)
    return topk_faiss(queries, gallery, k, index=plan["backend"].split("-")[1], nlist=plan.get("nlist"),
                      nprobe=plan.get("nprobe"))


# ------------------------------------------------------------------------------ recall


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def _text_hits(ranked: torch.Tensor, text_to_image: torch.Tensor) -> torch.Tensor:
    """[T, k] ranked image indices -> [T] bool: the text's image is among them."""
    return (ranked == text_to_image.view(-1, 1)).any(dim=1)


def _image_hits(ranked: torch.Tensor, text_to_image: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """[I', k] ranked text indices of the images ``images`` -> [I'] bool: any caption among them."""
    owner = text_to_image[ranked.clamp(min=0)]
    return ((owner == images.view(-1, 1)) & (ranked >= 0)).any(dim=1)


def _mean(hits: torch.Tensor) -> float:
    # the same float32 mean as eval.metrics.retrieval_recall
    return hits.float().mean().item() if hits.numel() else math.nan


def _width(ranked: torch.Tensor, k: int, gallery: int, what: str) -> int:
    kk = min(k, gallery)
    if ranked.shape[1] < kk:
        raise ValueError(f"{what} ranking has {ranked.shape[1]} columns, recall@{k} needs {kk}")
    return kk


def retrieval_recall_from_topk(
    text_topk: torch.Tensor,
    image_topk: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, float]:
    """CLIP_benchmark recall@k from rankings: ``text_topk`` [T, >=k] image indices per text
    (best first), ``image_topk`` [I, >=k] text indices per image, ``text_to_image`` [T].

    Same keys and definitions as ``eval.metrics.retrieval_recall``: a text is a hit when its image
    is in its first k; an image when any of its captions is in its first k; k is clamped to the
    gallery size; -1 entries are empty slots. A tie straddling the k-th place is decided by the
    given ranking (use :func:`search_recall` for ``retrieval_recall``'s own tie behaviour).
    """
    t2i = text_to_image.long().view(-1).cpu()
    text_topk, image_topk = text_topk.long().cpu(), image_topk.long().cpu()
    num_texts, num_images = t2i.numel(), image_topk.shape[0]
    if text_topk.shape[0] != num_texts:
        raise ValueError(f"text_topk has {text_topk.shape[0]} rows for {num_texts} texts")
    images = torch.arange(num_images)
    metrics: dict[str, float] = {}
    for k in _check_ks(ks):
        ki = _width(text_topk, k, num_images, "text->image")
        kt = _width(image_topk, k, num_texts, "image->text")
        metrics[f"image_retrieval_recall@{k}"] = _mean(_text_hits(text_topk[:, :ki], t2i))
        metrics[f"text_retrieval_recall@{k}"] = _mean(_image_hits(image_topk[:, :kt], t2i, images))
    return metrics


def _ambiguous(scores: torch.Tensor, k: int, scale: torch.Tensor, tie_rtol: float) -> torch.Tensor:
    """[Q] bool: the k-th and (k+1)-th scores are (near) equal, or a slot there is empty."""
    kth, nxt = scores[:, k - 1], scores[:, k]
    gap = kth - nxt
    return ~torch.isfinite(kth) | ~(gap > tie_rtol * scale)


class _Recall:
    """One direction's hits, with ambiguous queries re-ranked on their exact score row."""

    def __init__(self, texts: torch.Tensor, images: torch.Tensor, t2i: torch.Tensor, chunk: int | None,
                 tie_rtol: float) -> None:
        self.texts, self.images, self.t2i, self.chunk, self.tie_rtol = texts, images, t2i, chunk, tie_rtol

    def exact_rows(self, rows: torch.Tensor, text_to_image: bool) -> torch.Tensor:
        """Score rows as ``retrieval_recall`` sees them: rows (or columns) of texts @ images.T."""
        if text_to_image:
            return (self.texts[rows] @ self.images.T).float().cpu()
        return (self.texts @ self.images[rows].T).float().cpu().T

    def hits(self, scores: torch.Tensor, ranked: torch.Tensor, k: int, text_to_image: bool) -> torch.Tensor:
        queries = self.texts if text_to_image else self.images
        gallery = self.images if text_to_image else self.texts
        n = gallery.shape[0]
        kk = min(k, n)
        ids = torch.arange(queries.shape[0])
        hit = _text_hits(ranked[:, :kk], self.t2i) if text_to_image else _image_hits(ranked[:, :kk], self.t2i, ids)
        if kk >= n or not queries.shape[0]:  # every item retrieved (or no query): no tie matters
            return hit
        scale = queries.float().norm(dim=1).cpu() * gallery.float().norm(dim=1).max().cpu()
        redo = ids[_ambiguous(scores, kk, scale, self.tie_rtol)]
        chunk = query_chunk(n, self.chunk)
        for start in range(0, redo.numel(), chunk):
            rows = redo[start : start + chunk]
            top = self.exact_rows(rows.to(queries.device), text_to_image).topk(kk, dim=1, largest=True, sorted=True)
            if text_to_image:
                hit[rows] = _text_hits(top.indices, self.t2i[rows])
            else:
                hit[rows] = _image_hits(top.indices, self.t2i, rows)
        return hit


def recall_search_plan(backend: str, num_texts: int, num_images: int, nlist: int | None = None,
                       nprobe: int | None = None) -> dict[str, Any]:
    """What :func:`search_recall` runs, per direction: ``image_retrieval`` (text queries over the
    ``num_images`` images) and ``text_retrieval`` (image queries over the ``num_texts`` texts),
    each a :func:`search_plan`; ``requested`` is the backend asked for (``auto`` resolves per
    gallery size, so the two directions may differ)."""
    return {"requested": backend, "image_retrieval": search_plan(backend, num_images, nlist, nprobe),
            "text_retrieval": search_plan(backend, num_texts, nlist, nprobe)}


def search_recall(
    texts_emb: torch.Tensor,
    images_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = RECALL_KS,
    backend: str = "auto",
    chunk: int | None = None,
    nlist: int | None = None,
    nprobe: int | None = None,
    tie_rtol: float = 1e-4,
) -> dict[str, float]:
    """``eval.metrics.retrieval_recall(texts_emb @ images_emb.T, text_to_image, ks)`` without the
    full score matrix: top-(max k + 1) search both ways, then recall as in
    :func:`retrieval_recall_from_topk`, with near-tied queries re-ranked exactly (module doc)."""
    _check_pair(texts_emb, images_emb)
    ks = _check_ks(ks)
    if not tie_rtol >= 0:
        raise ValueError(f"tie_rtol must be >= 0, got {tie_rtol}")
    t2i = text_to_image.long().view(-1).cpu()
    num_texts, num_images = texts_emb.shape[0], images_emb.shape[0]
    if t2i.numel() != num_texts:
        raise ValueError(f"text_to_image has {t2i.numel()} entries for {num_texts} texts")
    if num_texts and (int(t2i.min()) < 0 or int(t2i.max()) >= num_images):
        raise ValueError(f"text_to_image must lie in [0, {num_images})")
    width = max(ks) + 1
    recall = _Recall(texts_emb, images_emb, t2i, chunk, tie_rtol)
    t_scores, t_ranked = topk(texts_emb, images_emb, width, backend, chunk, nlist, nprobe)
    i_scores, i_ranked = topk(images_emb, texts_emb, width, backend, chunk, nlist, nprobe)
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = _mean(recall.hits(t_scores, t_ranked, k, True))
        metrics[f"text_retrieval_recall@{k}"] = _mean(recall.hits(i_scores, i_ranked, k, False))
    return metrics
