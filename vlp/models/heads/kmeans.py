"""Episodic spherical k-means for the prototype head (ProtoCLIP's episodic clustering).

The head keeps, per rank, the detached embeddings of the (image, text) pairs it sees in training
(:class:`EpisodeBuffer`). When an episode is full, :func:`episode_prototypes` gathers every rank's
pairs (in rank order), runs ``faiss.Kmeans`` (spherical, fixed seed) on rank 0 only, and
broadcasts the centroids, so that every rank ends with identical prototypes. Without
torch.distributed initialised it is the same on one process.

What is clustered, so that prototype ``k`` of the image side and of the text side mean the same
cluster:

- shared prototypes: the pair midpoints ``normalize(z_image + z_text)``; prototype ``k`` is the
  ``k``-th centroid;
- one set per modality: the concatenated pairs ``[z_image, z_text] / sqrt(2)`` (unit norm);
  centroid ``k`` is split into its image half and its text half, each L2-normalised, which
  become image prototype ``k`` and text prototype ``k`` (clustering each modality on its own
  would give two unrelated numberings of the clusters).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpisodeBuffer:
    """Detached (image, text) embedding pairs of one rank, on the CPU, until an episode is full."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self._image: List[torch.Tensor] = []
        self._text: List[torch.Tensor] = []
        self.count = 0

    def add(self, image: torch.Tensor, text: torch.Tensor) -> None:
        """Keep ``image`` / ``text`` [B, d] (detached, float32, CPU)."""
        self._image.append(image.detach().float().cpu())
        self._text.append(text.detach().float().cpu())
        self.count += int(image.shape[0])

    @property
    def full(self) -> bool:
        return self.size > 0 and self.count >= self.size

    def take(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Every pair kept so far ([N, d] each), and an empty buffer."""
        image, text = torch.cat(self._image), torch.cat(self._text)
        self._image, self._text, self.count = [], [], 0
        return image, text


def gather_rows(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Every rank's ``rows`` [N_r, d] concatenated in rank order (ranks may hold different N_r)."""
    _, world = _world()
    rows = rows.to(device)
    if world == 1:
        return rows
    count = torch.tensor([rows.shape[0]], device=device, dtype=torch.long)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros(longest, rows.shape[1], dtype=rows.dtype, device=device)
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[: int(c.item())] for part, c in zip(parts, counts)])


def spherical_kmeans(points: torch.Tensor, k: int, niter: int, seed: int, nredo: int = 1) -> torch.Tensor:
    """``faiss.Kmeans`` (spherical: unit-norm centroids, fixed ``seed``; ``nredo`` runs, the best
    kept) of ``points`` [N, d]: [k, d] float32."""
    import faiss  # the clustering dependency; imported only when an episode is clustered

    if points.shape[0] < k:
        raise ValueError(f"k-means needs at least {k} points (one per prototype), got {points.shape[0]}")
    data = points.detach().float().cpu().contiguous().numpy()
    kmeans = faiss.Kmeans(data.shape[1], k, niter=niter, nredo=nredo, seed=seed, spherical=True,
                          verbose=False)
    kmeans.train(data)
    return torch.from_numpy(kmeans.centroids.copy())


def _broadcast_from_zero(tensor: torch.Tensor) -> torch.Tensor:
    _, world = _world()
    if world > 1:
        dist.broadcast(tensor, src=0)
    return tensor


def episode_prototypes(image: torch.Tensor, text: torch.Tensor, k: int, shared: bool, niter: int, seed: int,
                       device: torch.device, nredo: int = 1) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Prototypes from one episode: ``image`` / ``text`` [N_r, d] are this rank's pairs. Returns
    (shared or image prototypes [k, d], text prototypes [k, d] or None when shared), unit norm,
    float32 on ``device``, identical on every rank (k-means on rank 0, then a broadcast)."""
    rank, _ = _world()
    all_image, all_text = gather_rows(image, device), gather_rows(text, device)
    dim = all_image.shape[1]
    if shared:
        points = F.normalize(all_image + all_text, dim=-1)
    else:
        points = torch.cat([all_image, all_text], dim=1) / math.sqrt(2.0)
    centroids = torch.zeros(k, points.shape[1], dtype=torch.float32, device=device)
    if rank == 0:
        centroids.copy_(spherical_kmeans(points, k, niter, seed, nredo))
    centroids = _broadcast_from_zero(centroids)
    if shared:
        return F.normalize(centroids, dim=-1), None
    return F.normalize(centroids[:, :dim], dim=-1), F.normalize(centroids[:, dim:], dim=-1)
