"""The prototype objective, its codes, the usage metrics and the episodic k-means on 2 gloo
processes (holding different numbers of rows) equal one process on the concatenated batch (float64, 1e-6)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from test_prototype_head import StubTextTower, assert_prototypes_at_centres, clustered_pairs
from vlp.config import LossTermConfig
from vlp.losses.prototype import sinkhorn_codes
from vlp.losses.registry import compute_objective
from vlp.models.heads.prototypes import PrototypeHead

WORLD, BATCH, K = 2, 8, 3
SPLIT = (0, 3, BATCH)  # uneven: rank 0 holds 3 rows, rank 1 holds 5 (a global mean, not a mean of rank means)
CASES = {
    "swapped": ({}, {}),
    "projected_within_self": ({"projection_dim": 3}, {"within_weight": 0.5, "temperature": 0.2}),
    "within_views": ({}, {"within_weight": 0.7, "sinkhorn_iterations": 5}),
    "back_translation": ({"projection_dim": 3}, {"back_translation": True, "within_weight": 0.5}),
    "shared_back_translation": ({"shared": True}, {"back_translation": True, "within_weight": 0.5, "epsilon": 0.1}),
}


class Model(nn.Module):
    """Linear 'towers' in float64 and the prototype head over their embeddings."""

    def __init__(self, head_options):
        super().__init__()
        torch.manual_seed(0)
        self.image, self.text = nn.Linear(5, 4).double(), nn.Linear(5, 4).double()
        self.head = PrototypeHead(nn.Identity(), StubTextTower(4), num_prototypes=K, **head_options).double()

    def forward(self, images, texts, views):
        outputs = {"image_emb": F.normalize(self.image(images), dim=-1), "text_emb": F.normalize(self.text(texts), dim=-1)}
        if views:
            outputs["image_emb_aug"] = F.normalize(self.image(images.flip(1)), dim=-1)
            outputs["text_emb_aug"] = F.normalize(self.text(texts * 0.5 + 0.1), dim=-1)
        outputs.update(self.head({}, outputs))
        return outputs


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 5, generator=g, dtype=torch.float64), torch.randn(BATCH, 5, generator=g, dtype=torch.float64)


def _run(case, rows=slice(None)):
    head_options, term_options = CASES[case]
    model = Model(head_options)
    images, texts = _data()
    outputs = model(images[rows], texts[rows], views=case == "within_views")
    loss = compute_objective(outputs, [LossTermConfig(name="prototype", weight=1.0, options=term_options)])["total"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    codes = sinkhorn_codes(outputs["proto_image_scores"])
    metrics = {k: v.double() for k, v in model.head.step_metrics(outputs).items()}
    return loss.detach(), grads, codes, metrics


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    for case in CASES:
        loss, grads, codes, metrics = _run(case, slice(SPLIT[rank], SPLIT[rank + 1]))
        dist.all_reduce(loss)
        for g in grads.values():  # what data-parallel training does with gradients
            dist.all_reduce(g)
            g /= WORLD
        torch.save({"loss": loss / WORLD, "grads": grads, "codes": codes, "metrics": metrics},
                   os.path.join(out_dir, f"{case}-rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The folder where each rank of one 2-process run saved every case's results."""
    out = tmp_path_factory.mktemp("prototype-ranks")
    mp.spawn(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_equal_one_process(two_ranks, case):
    ref_loss, ref_grads, ref_codes, ref_metrics = _run(case)
    assert {"image.weight", "text.weight"} <= set(ref_grads)
    if CASES[case][0].get("projection_dim"):
        assert "head.projections.image.weight" in ref_grads
    assert any(name.startswith("head.prototypes.") for name in ref_grads)  # within / swapped terms move them
    halves = [torch.load(two_ranks / f"{case}-rank{rank}.pt", weights_only=True) for rank in range(WORLD)]
    torch.testing.assert_close(torch.cat([h["codes"] for h in halves]), ref_codes, atol=1e-6, rtol=0)
    for res in halves:
        assert abs(res["loss"].item() - ref_loss.item()) < 1e-6, (case, res["loss"].item(), ref_loss.item())
        assert set(res["grads"]) == set(ref_grads)
        for name, grad in ref_grads.items():
            assert torch.allclose(res["grads"][name], grad, atol=1e-6, rtol=0), (case, name)
        for key, value in ref_metrics.items():  # usage over the global batch, not the rank's half
            assert abs(res["metrics"][key].item() - value.item()) < 1e-9, (case, key)


def _kmeans_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.manual_seed(rank)  # different random prototypes on each rank before the episode
    image, text, _, _ = clustered_pairs(16)
    head = PrototypeHead(nn.Identity(), StubTextTower(8), num_prototypes=4, kmeans_episode=24, kmeans_niter=10,
                         kmeans_nredo=5).double()
    head.train()
    half = slice(rank * 32, (rank + 1) * 32)
    for start in (0, 16):  # each rank sees its own 32 pairs in two batches of 16
        rows = slice(half.start + start, half.start + start + 16)
        head({}, {"image_emb": image[rows], "text_emb": text[rows]})
        head.after_step()
    torch.save({n: p.detach() for n, p in head.prototypes.items()}, os.path.join(out_dir, f"kmeans{rank}.pt"))
    dist.destroy_process_group()


def test_kmeans_on_two_ranks_gives_identical_prototypes_at_the_centres(tmp_path):
    mp.spawn(_kmeans_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"kmeans{rank}.pt", weights_only=True) for rank in range(WORLD)]
    for name in ("image", "text"):
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    image, text, image_centres, text_centres = clustered_pairs(16)
    torch.manual_seed(5)
    one = PrototypeHead(nn.Identity(), StubTextTower(8), num_prototypes=4, kmeans_episode=64, kmeans_niter=10,
                        kmeans_nredo=5).double()
    one.train()
    one({}, {"image_emb": image, "text_emb": text})  # the concatenated episode on one process
    one.after_step()
    for name in ("image", "text"):
        torch.testing.assert_close(one.prototypes[name].detach(), ranks[0][name], atol=1e-5, rtol=0)
    assert_prototypes_at_centres(one, image_centres, text_centres)
