"""Two CPU processes (gloo) give the same loss and gradients as one process on the whole batch."""

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(__file__))
from tiny_arch import TINY_ARCH  # noqa: E402

from vlp.losses.chunked import chunked_clip_loss  # noqa: E402
from vlp.losses.contrastive import clip_loss  # noqa: E402
from vlp.losses.distributed import gather_with_grad  # noqa: E402
from vlp.models.dual_encoder import DualEncoder  # noqa: E402

WORLD = 2
BATCH = 6  # global


def _model() -> DualEncoder:
    torch.manual_seed(0)
    return DualEncoder(TINY_ARCH).double()


def _batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, 16, 16, generator=g, dtype=torch.float64)
    texts = torch.randint(1, 64, (BATCH, 8), generator=g)
    return images, texts


LOSSES = {"dense": clip_loss, "chunked": lambda i, t, s: chunked_clip_loss(i, t, s, chunk=2)}


def _loss_and_grads(model, images, texts, loss_name="dense"):
    out = model(images, texts)
    loss = LOSSES[loss_name](out["image_emb"].double(), out["text_emb"].double(), out["logit_scale"].double())
    loss.backward()
    core = model.module if isinstance(model, DistributedDataParallel) else model
    return loss.detach(), {n: p.grad.detach().clone() for n, p in core.named_parameters() if p.grad is not None}


def _worker(rank: int, init_file: str, out_dir: str, loss_name: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    model = DistributedDataParallel(_model())
    images, texts = _batch()
    local = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    loss, grads = _loss_and_grads(model, images[local], texts[local], loss_name)
    dist.all_reduce(loss)
    torch.save({"loss": loss / WORLD, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _gather_worker(rank: int, init_file: str, out_dir: str, _: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    x = torch.full((2, 3), float(rank + 1), dtype=torch.float64, requires_grad=True)
    gathered = gather_with_grad(x)
    weights = torch.arange(12, dtype=torch.float64).reshape(4, 3)
    (gathered * weights).sum().backward()
    torch.save({"gathered": gathered.detach(), "grad": x.grad}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _spawn(fn, tmp_path, loss_name="dense"):
    mp.spawn(fn, args=(str(tmp_path / "init"), str(tmp_path), loss_name), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_gather_with_grad_concatenates_and_sums_gradients(tmp_path):
    results = _spawn(_gather_worker, tmp_path)
    expected = torch.cat([torch.full((2, 3), 1.0), torch.full((2, 3), 2.0)]).double()
    weights = torch.arange(12, dtype=torch.float64).reshape(4, 3)
    for rank, res in enumerate(results):
        assert torch.equal(res["gathered"], expected)
        # both ranks apply the same weights, so each input's gradient is twice its slice of them
        assert torch.equal(res["grad"], 2 * weights[2 * rank:2 * rank + 2])


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_two_ranks_equal_one_process_on_concatenated_batch(tmp_path, loss_name):
    ref_loss, ref_grads = _loss_and_grads(_model(), *_batch())  # dense loss, one process
    results = _spawn(_worker, tmp_path, loss_name)
    assert ref_grads, "the reference run produced no gradients"
    for res in results:
        assert abs(res["loss"].item() - ref_loss.item()) < 1e-6
        assert set(res["grads"]) == set(ref_grads)
        for name, grad in ref_grads.items():
            assert torch.allclose(res["grads"][name], grad, atol=1e-6, rtol=0), name
    # the temperature receives gradient from every rank's negatives
    assert ref_grads["logit_head.logit_scale"].abs().item() > 1e-4
