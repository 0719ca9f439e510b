"""Every registered objective is exact under data parallelism: 2 gloo processes give the loss and
parameter gradients of one process on the concatenated batch (float64, 1e-6)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from vlp.config import LossTermConfig
from vlp.losses.registry import LOSS_TERMS, compute_objective

WORLD, BATCH, NEGATIVES = 2, 6, 2
TERMS = {
    "clip": {}, "clip_smoothed_chunked": {"label_smoothing": 0.1, "chunked": True, "chunk_size": 2},
    "siglip": {}, "siglip_chunked": {"chunked": True, "chunk_size": 2}, "dcl": {}, "dcl_weighted": {"positive_weight_sigma": 0.5}, "negclip": {},
    "uniformity": {}, "alignment": {}, "mochi": {"hardest": 3, "synthetic": 2, "query_mixed": 1},
    "clip_cacr": {"cacr_attract": 1.0, "cacr_repel": 2.0}, "intra_modal": {}, "mv_infonce": {"temperature": 0.5},
    "caption": {"label_smoothing": 0.1},
    "prototype": {}, "prototype_translated": {"back_translation": True, "within_weight": 0.5},
}
LENGTH, VOCAB = 4, 7


def _term(key):
    name = key.split("_")[0] if key.split("_")[0] in LOSS_TERMS else key
    return LossTermConfig(name=name, weight=1.0, options=TERMS[key])


class Towers(nn.Module):
    """Linear 'towers' in float64 whose outputs feed every objective."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image, self.text = nn.Linear(5, 4).double(), nn.Linear(5, 4).double()
        self.captioner = nn.Linear(5, LENGTH * VOCAB).double()
        self.logit_scale = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
        self.logit_bias = nn.Parameter(torch.tensor(-1.0, dtype=torch.float64))
        self.prototypes = nn.Parameter(torch.randn(3, 4, dtype=torch.float64))

    def forward(self, images, texts, negatives, labels):
        b, k, d = negatives.shape
        image_emb, text_emb = F.normalize(self.image(images), dim=-1), F.normalize(self.text(texts), dim=-1)
        prototypes = F.normalize(self.prototypes, dim=-1)
        return {"image_emb": image_emb, "text_emb": text_emb,
                "proto_image_emb": image_emb, "proto_text_emb": text_emb,
                "proto_image_scores": image_emb @ prototypes.T, "proto_text_scores": text_emb @ prototypes.T,
                "image_emb_aug": F.normalize(self.image(images.flip(1)), dim=-1),
                "text_emb_aug": F.normalize(self.text(texts * 0.5 + 0.1), dim=-1),
                "caption_logits": self.captioner(images).reshape(b, LENGTH, VOCAB), "caption_labels": labels,
                "neg_text_emb": F.normalize(self.text(negatives.reshape(b * k, d)), dim=-1).reshape(b, k, -1),
                "logit_scale": self.logit_scale.exp(), "logit_bias": self.logit_bias}


def _data():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(1, VOCAB, (BATCH, LENGTH), generator=g)
    labels[0, 1:] = 0  # uneven caption lengths across ranks: 1 token in row 0, 3 in row 4
    labels[4, 3:] = 0
    return (torch.randn(BATCH, 5, generator=g, dtype=torch.float64), torch.randn(BATCH, 5, generator=g, dtype=torch.float64),
            torch.randn(BATCH, NEGATIVES, 5, generator=g, dtype=torch.float64), labels)


def _loss_and_grads(key, rows=slice(None)):
    model = Towers()
    images, texts, negatives, labels = _data()
    loss = compute_objective(model(images[rows], texts[rows], negatives[rows], labels[rows]), [_term(key)])["total"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank, init_file, out_dir, key):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    loss, grads = _loss_and_grads(key, slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD))
    dist.all_reduce(loss)
    for g in grads.values():  # what data-parallel training does with gradients
        dist.all_reduce(g)
        g /= WORLD
    torch.save({"loss": loss / WORLD, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_every_registered_term_is_covered():
    assert {_term(k).name for k in TERMS} == set(LOSS_TERMS)


@pytest.mark.parametrize("key", sorted(TERMS))
def test_two_ranks_equal_one_process(tmp_path, key):
    ref_loss, ref_grads = _loss_and_grads(key)
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path), key), nprocs=WORLD, join=True)
    assert ref_grads
    for rank in range(WORLD):
        res = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert abs(res["loss"].item() - ref_loss.item()) < 1e-6, (key, res["loss"].item(), ref_loss.item())
        assert set(res["grads"]) == set(ref_grads)
        for name, grad in ref_grads.items():
            assert torch.allclose(res["grads"][name], grad, atol=1e-6, rtol=0), (key, name)
