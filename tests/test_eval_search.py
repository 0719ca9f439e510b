"""Top-k search backends and search-based retrieval recall against eval.metrics.retrieval_recall."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from eval.metrics import retrieval_recall
from eval.encoding.search import (
    FLAT_THRESHOLD,
    IVF_THRESHOLD,
    resolve_backend,
    retrieval_recall_from_topk,
    search_recall,
    topk,
    topk_faiss,
    topk_torch,
)

KS = (1, 2, 5, 10, 100)  # 100 > every gallery here: clamped like eval.metrics


def retrieval_set(seed: int, num_images: int = 37, dim: int = 16, ties: bool = False):
    """Images with 0-4 captions each (some with none); ``ties``: small integer embeddings, so
    many scores are exactly equal (and exact in float32 whatever the summation order)."""
    g = torch.Generator().manual_seed(seed)
    captions = torch.randint(0, 5, (num_images,), generator=g)
    text_to_image = torch.repeat_interleave(torch.arange(num_images), captions)
    t = len(text_to_image)
    if ties:
        images = torch.randint(-1, 2, (num_images, 3), generator=g).float()
        texts = torch.randint(-1, 2, (t, 3), generator=g).float()
    else:
        images = F.normalize(torch.randn(num_images, dim, generator=g), dim=-1)
        texts = F.normalize(torch.randn(t, dim, generator=g), dim=-1)
    return texts, images, text_to_image


@pytest.mark.parametrize("backend", ["torch", "faiss-flat"])
@pytest.mark.parametrize("ties", [False, True])
def test_search_recall_equals_metrics(backend: str, ties: bool) -> None:
    for seed in range(6):
        texts, images, t2i = retrieval_set(seed, ties=ties)
        expected = retrieval_recall(texts @ images.T, t2i, KS)
        got = search_recall(texts, images, t2i, KS, backend=backend, chunk=5)
        assert got == expected, (seed, got, expected)


def test_search_recall_fully_tied_scores() -> None:
    """Every score equal: which items torch.topk keeps is PyTorch's choice; we make the same one."""
    t2i = torch.arange(20).repeat_interleave(2)
    texts, images = torch.zeros(40, 4), torch.ones(20, 4)
    expected = retrieval_recall(texts @ images.T, t2i, KS)
    for backend in ("torch", "faiss-flat"):
        assert search_recall(texts, images, t2i, KS, backend=backend) == expected


def test_hand_built_known_answers() -> None:
    images = torch.eye(3)
    texts = torch.tensor([[1.0, 0.1, 0.0],   # caption of image 0; best image 0 (hit)
                          [0.0, 1.0, 0.5],   # caption of image 2; ranks image 1, then 2
                          [0.2, 0.0, 1.0],   # caption of image 2; best image 2 (hit)
                          [0.9, 0.5, 0.0]])  # caption of image 1; ranks image 0, then 1
    t2i = torch.tensor([0, 2, 2, 1])
    # image -> texts: image 0 ranks t0 (its own); image 1 ranks t1 (image 2's), then t3 (own);
    # image 2 ranks t2 (own)
    expected = {"image_retrieval_recall@1": 0.5, "text_retrieval_recall@1": 2 / 3,
                "image_retrieval_recall@2": 1.0, "text_retrieval_recall@2": 1.0}
    for backend in ("torch", "faiss-flat"):
        got = search_recall(texts, images, t2i, (1, 2), backend=backend)
        assert got == pytest.approx(expected, abs=1e-7)
        assert got == retrieval_recall(texts @ images.T, t2i, (1, 2))
    scores, indices = topk_torch(texts, images, 2)
    assert indices.tolist() == [[0, 1], [1, 2], [2, 0], [0, 1]]
    assert scores[:, 0].tolist() == pytest.approx([1.0, 1.0, 1.0, 0.9])
    text_rank = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 1]])
    image_rank = torch.tensor([[0, 3], [1, 3], [2, 1]])
    assert retrieval_recall_from_topk(text_rank, image_rank, t2i, (1, 2)) == pytest.approx(expected, abs=1e-7)


def test_recall_from_full_rankings_equals_metrics() -> None:
    texts, images, t2i = retrieval_set(3)
    scores = texts @ images.T
    text_rank, image_rank = scores.argsort(dim=1, descending=True), scores.T.argsort(dim=1, descending=True)
    assert retrieval_recall_from_topk(text_rank, image_rank, t2i, KS) == retrieval_recall(scores, t2i, KS)
    with pytest.raises(ValueError, match="recall@10 needs 10"):
        retrieval_recall_from_topk(text_rank[:, :5], image_rank, t2i, (10,))


def test_topk_torch_chunking_and_faiss_flat_agree() -> None:
    g = torch.Generator().manual_seed(0)
    queries, gallery = torch.randn(50, 8, generator=g), torch.randn(300, 8, generator=g)
    full = (queries @ gallery.T).topk(7, dim=1)
    for chunk in (1, 7, 1000):
        scores, indices = topk_torch(queries, gallery, 7, chunk=chunk)
        assert torch.equal(indices, full.indices) and torch.allclose(scores, full.values)
    scores, indices = topk_faiss(queries, gallery, 7)
    assert torch.equal(indices, full.indices) and torch.allclose(scores, full.values, atol=1e-5)
    scores, indices = topk(queries, gallery[:4], 7)  # k clamped to the gallery size
    assert indices.shape == (50, 4) and scores.dtype == torch.float32


def test_ivf_with_all_lists_probed_equals_flat() -> None:
    g = torch.Generator().manual_seed(1)
    gallery = F.normalize(torch.randn(600, 8, generator=g), dim=-1)
    queries = F.normalize(torch.randn(40, 8, generator=g), dim=-1)
    flat = topk_faiss(queries, gallery, 10, index="flat")
    ivf = topk_faiss(queries, gallery, 10, index="ivf", nlist=8, nprobe=8)
    assert torch.equal(ivf[1], flat[1]) and torch.allclose(ivf[0], flat[0], atol=1e-5)
    approx = topk_faiss(queries, gallery, 10, index="ivf", nlist=8, nprobe=1)  # approximate, but valid
    assert approx[1].shape == (40, 10) and int(approx[1].max()) < 600

    t2i = torch.arange(150).repeat_interleave(4)
    texts = F.normalize(torch.randn(600, 8, generator=g), dim=-1)
    images = F.normalize(torch.randn(150, 8, generator=g), dim=-1)
    flat_recall = search_recall(texts, images, t2i, KS, backend="faiss-flat")
    assert search_recall(texts, images, t2i, KS, backend="faiss-ivf", nlist=3, nprobe=3) == flat_recall
    assert flat_recall == retrieval_recall(texts @ images.T, t2i, KS)


def test_backend_choice_and_errors() -> None:
    assert resolve_backend("auto", FLAT_THRESHOLD) == "torch"
    assert resolve_backend("auto", FLAT_THRESHOLD + 1) == "faiss-flat"
    assert resolve_backend("auto", IVF_THRESHOLD) == "faiss-flat"
    assert resolve_backend("auto", IVF_THRESHOLD + 1) == "faiss-ivf"
    assert resolve_backend("faiss-flat", 10) == "faiss-flat"
    with pytest.raises(ValueError, match="choose one of auto, torch, faiss-flat, faiss-ivf"):
        resolve_backend("annoy", 10)
    texts, images, t2i = retrieval_set(0)
    with pytest.raises(ValueError, match="text_to_image"):
        search_recall(texts, images, t2i[:-1])
    with pytest.raises(ValueError, match="ks must be positive"):
        search_recall(texts, images, t2i, (0, 1))
    with pytest.raises(ValueError, match="expected \\[Q, D\\]"):
        topk_torch(texts, images[:, :3], 1)
    with pytest.raises(ValueError, match="nprobe"):
        topk_faiss(texts, images, 1, index="ivf", nlist=2, nprobe=3)


def test_empty_sides() -> None:
    images = F.normalize(torch.randn(5, 4), dim=-1)
    got = search_recall(torch.zeros(0, 4), images, torch.zeros(0, dtype=torch.long), (1,))
    assert math.isnan(got["image_retrieval_recall@1"]) and got["text_retrieval_recall@1"] == 0.0
    assert got == pytest.approx(retrieval_recall(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), (1,)),
                                nan_ok=True)
