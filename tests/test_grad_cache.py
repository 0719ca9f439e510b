"""Gradient caching (vlp/train/grad_cache.py): k micro-batches give the losses and parameter
gradients of one batch k times larger (float64, dropout off: absolute difference <= 1e-5 on every
element), with every objective family and head, on 2 DDP processes, with dropout replayed bitwise,
and with forward-time state (k-means episode, BatchNorm statistics) written once per micro-batch."""

from __future__ import annotations

import copy
import functools
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from tiny_arch import TINY_ARCH
from vlp.config import LossTermConfig
from vlp.losses.registry import compute_objective
from vlp.models.dual_encoder import DualEncoder
from vlp.train.grad_cache import cached_backward

ATOL = 1e-5  # absolute, on every loss and every gradient element
RESNET_ARCH = {**TINY_ARCH, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8}}
CLIP = [LossTermConfig("clip")]
SIGLIP = [LossTermConfig("siglip")]
CAPTION = [LossTermConfig("clip"), LossTermConfig("caption", 2.0)]
PROTOTYPE = [LossTermConfig("clip"), LossTermConfig("prototype", 0.5, {"within_weight": 0.5})]
EVERYTHING = [LossTermConfig("clip"), LossTermConfig("siglip", 0.5), LossTermConfig("caption", 2.0),
              LossTermConfig("prototype", 0.5)]
HEADS = {"caption": {"n_queries": 4}, "prototypes": {"num_prototypes": 8, "kmeans_episode": 1024}}
WORLD = 2


def _model(arch=TINY_ARCH, heads=None, bias=None) -> DualEncoder:
    torch.manual_seed(0)
    scale = {} if bias is None else {"init_logit_scale": math.log(10.0)}
    return DualEncoder(arch, init_logit_bias=bias, heads=heads, **scale).double().train()


def _batch(n: int = 64, size: int = 16, short_rows: int = 16):
    """Images and captions [start, 1..6 tokens, end, padding]; the first ``short_rows`` captions hold
    at most 2 tokens, so the first micro-batch's longest caption is shorter than the others'."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, size, size, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, 7, (n,), generator=g)
    lengths[:short_rows] = lengths[:short_rows].clamp(max=2)
    texts = torch.zeros(n, 8, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        texts[row, 0], texts[row, length + 1] = 62, 63
        texts[row, 1:length + 1] = torch.randint(1, 62, (length,), generator=g)
    return {"image": images, "text": texts}


def _split(batch, k: int):
    n = batch["image"].shape[0]
    return [{key: value[i * n // k:(i + 1) * n // k] for key, value in batch.items()} for i in range(k)]


def _grads(model):
    core = model.module if isinstance(model, DistributedDataParallel) else model
    return {n: p.grad.detach().clone() for n, p in core.named_parameters() if p.grad is not None}


def _big_batch(model, batch, terms):
    out = model(**batch)
    losses = compute_objective(out, terms)
    losses["total"].backward()
    return {k: v.detach() for k, v in losses.items()}, _grads(model), {k: v.detach() for k, v in out.items()}


def _cached(model, batch, terms, k: int, **kwargs):
    losses, outputs = cached_backward(model, _split(batch, k), functools.partial(compute_objective, terms=terms),
                                      **kwargs)
    return losses, _grads(model), outputs


def _max_difference(got, ref, model=None, nonzero: bool = True) -> float:
    """The largest absolute difference of the losses / gradients ``got`` and ``ref`` (same keys;
    every parameter of ``model`` that takes a gradient has one, and, with ``nonzero``, none is zero)."""
    assert set(got) == set(ref)
    if model is not None:
        assert set(ref) == {n for n, p in model.named_parameters() if p.requires_grad}
        zero = [n for n in ref if not ref[n].abs().max() > 0]
        assert not (nonzero and zero), zero
    return max((got[n].double() - ref[n].double()).abs().max().item() for n in ref)


def _assert_same_step(model, batch, terms, k: int = 4):
    """k micro-batches through cached_backward give the big batch's losses and gradients."""
    reference = copy.deepcopy(model)
    ref_losses, ref_grads, ref_out = _big_batch(reference, batch, terms)
    losses, grads, outputs = _cached(model, batch, terms, k)
    loss_diff, grad_diff = _max_difference(losses, ref_losses), _max_difference(grads, ref_grads, model)
    print(f"\n{[t.name for t in terms]} {k} x {batch['image'].shape[0] // k}: max |loss diff| {loss_diff:.2e}, "
          f"max |grad diff| {grad_diff:.2e}")
    assert loss_diff <= ATOL and grad_diff <= ATOL
    return outputs, ref_out


def test_clip_four_micro_batches_equal_one_batch_of_64():
    model, batch = _model(), _batch()
    outputs, ref_out = _assert_same_step(model, batch, CLIP)
    assert outputs["logit_scale"].dim() == 0 and outputs["image_emb"].shape == (64, 16)
    torch.testing.assert_close(outputs["text_emb"], ref_out["text_emb"], rtol=0, atol=1e-12)
    # the tolerance tells caching from summing each micro-batch's own loss (negatives of its 16 rows only)
    naive = copy.deepcopy(model)
    for micro in _split(batch, 4):
        compute_objective(naive(**micro), CLIP)["total"].backward()
    reference = copy.deepcopy(model)
    _, ref_grads, _ = _big_batch(reference, batch, CLIP)
    assert _max_difference(_grads(naive), ref_grads) > 100 * ATOL


def test_siglip_with_a_logit_bias_equals_one_batch():
    outputs, _ = _assert_same_step(_model(bias=-10.0), _batch(), SIGLIP)
    assert outputs["logit_bias"].item() == -10.0


def test_caption_head_with_uneven_caption_lengths_equals_one_batch():
    model, batch = _model(heads={"caption": {"n_queries": 4}}), _batch()
    lengths = [model(**micro)["caption_logits"].shape[1] for micro in _split(batch, 4)]
    assert lengths[0] < max(lengths), lengths  # the micro-batches' logits have different lengths
    outputs, ref_out = _assert_same_step(model, batch, CAPTION)
    assert outputs["caption_logits"].shape == ref_out["caption_logits"].shape == (64, max(lengths), 64)
    labels = outputs["caption_labels"]
    assert (labels[:16, lengths[0]:] == -100).all()  # the padding of the short micro-batch is ignored
    assert torch.equal(labels.masked_fill(labels == -100, 0), ref_out["caption_labels"])
    torch.testing.assert_close(outputs["caption_logits"][:16, :lengths[0]], ref_out["caption_logits"][:16, :lengths[0]],
                               rtol=0, atol=1e-12)


def test_prototype_head_equals_one_batch_and_keeps_each_pair_once():
    model, batch = _model(heads={"prototypes": HEADS["prototypes"]}), _batch()
    outputs, ref_out = _assert_same_step(model, batch, PROTOTYPE)
    head = model.heads["prototypes"]
    assert head.episode.count == 64  # the replayed forwards keep no second copy for the k-means episode
    kept_image, kept_text = head.episode.take()
    torch.testing.assert_close(kept_image, ref_out["proto_image_emb"].float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(kept_text, ref_out["proto_text_emb"].float(), rtol=0, atol=1e-6)


def test_every_term_and_head_together_at_k_16():
    _assert_same_step(_model(heads=HEADS, bias=-10.0), _batch(), EVERYTHING, k=16)


def _naive_micro_steps(model, batch, terms, k: int):
    """The memory-hungry reference: every micro-batch forwarded with graph in turn, the outputs
    joined with graph, one backward. Returns (losses, gradients, per-micro-batch outputs)."""
    parts = [model(**micro) for micro in _split(batch, k)]
    joined = {"image_emb": torch.cat([p["image_emb"] for p in parts]),
              "text_emb": torch.cat([p["text_emb"] for p in parts]), "logit_scale": parts[0]["logit_scale"]}
    losses = compute_objective(joined, terms)
    losses["total"].backward()
    return {k: v.detach() for k, v in losses.items()}, _grads(model), parts


def test_dropout_masks_are_replayed_bitwise():
    model = _model()
    model.image_tower.set_patch_dropout(0.5)  # keeps 2 of the 4 patches, drawn at random per sample
    model.text_tower.register_forward_hook(lambda module, args, out: F.dropout(out, 0.25, training=module.training))
    batch, k = _batch(), 4
    micro = _split(batch, k)[0]
    with torch.no_grad():
        first, second = model(**micro), model(**micro)
    assert not torch.equal(first["image_emb"], second["image_emb"])  # each forward draws other masks
    assert not torch.equal(first["text_emb"], second["text_emb"])
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append({key: out[key].detach().clone()
                                                                       for key in ("image_emb", "text_emb")}))
    reference = copy.deepcopy(model)
    torch.manual_seed(7)
    ref_losses, ref_grads, ref_parts = _naive_micro_steps(reference, batch, CLIP, k)
    ref_rng = torch.get_rng_state()
    seen.clear()
    torch.manual_seed(7)
    losses, grads, _ = _cached(model, batch, CLIP, k)
    assert len(seen) == 2 * k
    for i in range(k):
        for key in ("image_emb", "text_emb"):
            assert torch.equal(seen[k + i][key], seen[i][key]), (i, key)  # second pass = first pass, bitwise
            assert torch.equal(seen[i][key], ref_parts[i][key].detach()), (i, key)  # the same masks as one pass
    assert torch.equal(torch.get_rng_state(), ref_rng)  # the random stream continues as after one pass
    diff = max(_max_difference(losses, ref_losses), _max_difference(grads, ref_grads, model))
    print(f"\ndropout on: max |diff| to forwarding each micro-batch once with graph {diff:.2e}")
    assert diff <= ATOL


def test_batchnorm_statistics_move_once_per_micro_batch():
    model, k = _model(arch=RESNET_ARCH), 4
    batch = _batch(size=32)
    sequential = copy.deepcopy(model)
    with torch.no_grad():
        for micro in _split(batch, k):
            sequential(**micro)  # plain accumulation: each micro-batch's statistics once
    reference = copy.deepcopy(model)
    ref_losses, ref_grads, _ = _naive_micro_steps(reference, batch, CLIP, k)
    losses, grads, _ = _cached(model, batch, CLIP, k)
    expected = dict(sequential.named_buffers())
    tracked = [name for name in expected if name.endswith("num_batches_tracked")]
    assert tracked and all(int(expected[name]) == k for name in tracked)
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, expected[name]), name
    # open_clip zeroes each bottleneck's last BatchNorm weight: the branch before it has zero gradients
    diff = max(_max_difference(losses, ref_losses), _max_difference(grads, ref_grads, model, nonzero=False))
    print(f"\nResNet (BatchNorm on micro-batch statistics): max |diff| {diff:.2e}")
    assert diff <= ATOL


def test_scale_loss_scales_every_gradient_and_keep_going_false_skips_the_backward():
    batch = _batch(16, short_rows=4)
    plain, scaled, skipped = _model(), _model(), _model()
    _, grads, _ = _cached(plain, batch, CLIP, 2)
    losses, scaled_grads, _ = _cached(scaled, batch, CLIP, 2, scale_loss=lambda loss: 8 * loss)
    assert set(scaled_grads) == set(grads)
    for name, grad in grads.items():
        torch.testing.assert_close(scaled_grads[name], 8 * grad, rtol=1e-12, atol=0)
    seen = []
    skip_losses, outputs = cached_backward(skipped, _split(batch, 2), functools.partial(compute_objective, terms=CLIP),
                                           keep_going=lambda losses: seen.append(losses["total"]) or False)
    assert len(seen) == 1 and skip_losses["total"].item() == losses["total"].item()
    assert _grads(skipped) == {} and outputs["image_emb"].shape == (16, 16)


def test_a_locked_image_tower_takes_no_gradient_and_the_rest_equals_one_batch():
    model = _model()
    model.image_tower.requires_grad_(False)  # what model.lock_image does to its parameters
    _assert_same_step(model, _batch(16, short_rows=4), CLIP, k=2)
    assert all(p.grad is None for p in model.image_tower.parameters())


def test_an_undeclared_scalar_output_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"output 'logit_scale' is a scalar.*declare its join"):
        _cached(_model(), _batch(8, short_rows=2), CLIP, 2, joins={})


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    model = DistributedDataParallel(_model(heads=HEADS, bias=-10.0))
    reductions = []
    model.register_comm_hook(None, lambda state, bucket: reductions.append(1) or allreduce_hook(state, bucket))
    local = _split(_batch(), WORLD)[rank]
    losses, grads, _ = _cached(model, local, EVERYTHING, 4, no_sync=model.no_sync)
    cached_reductions = len(reductions)
    model.zero_grad(set_to_none=True)
    _big_batch(model, local, EVERYTHING)  # one plain step: the all-reduces of one synced backward
    for value in losses.values():
        dist.all_reduce(value)
        value /= WORLD
    torch.save({"losses": losses, "grads": grads, "reductions": (cached_reductions, len(reductions) - cached_reductions)},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_ranks_of_four_micro_batches_of_8_equal_one_process_of_64(tmp_path):
    model = _model(heads=HEADS, bias=-10.0)
    ref_losses, ref_grads, _ = _big_batch(model, _batch(), EVERYTHING)
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        cached, plain = result["reductions"]
        assert cached == plain >= 1  # DDP all-reduced once per step, in the last micro-batch's backward
        loss_diff = _max_difference(result["losses"], ref_losses)
        grad_diff = _max_difference(result["grads"], ref_grads, model)
        print(f"\nrank {rank}, 2 x 4 x 8 vs 1 x 64: max |loss diff| {loss_diff:.2e}, max |grad diff| {grad_diff:.2e}")
        assert loss_diff <= ATOL and grad_diff <= ATOL
