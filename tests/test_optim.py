"""Weight-decay exclusions, the warmup + cosine schedule on exact values, and gradient clipping folded
into the fused AdamW step."""

import math

import pytest
import torch
from torch import nn

from tiny_arch import TINY_ARCH
from vlp.config import OptimConfig
from vlp.models.dual_encoder import DualEncoder
from vlp.models.open_clip_layout import from_open_clip_key, open_clip_model
from vlp.train.precision import step_with_clipped_gradients
from vlp.train.optim import build_optimizer, lr_factor


def test_no_decay_on_norms_biases_embeddings_and_temperature():
    model = DualEncoder(TINY_ARCH)
    opt = build_optimizer(model, OptimConfig(weight_decay=0.2))
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in opt.param_groups[0]["params"]}
    no_decay = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert opt.param_groups[0]["weight_decay"] == 0.2 and opt.param_groups[1]["weight_decay"] == 0.0
    assert decay.isdisjoint(no_decay) and decay | no_decay == set(names.values())
    # named as open_clip names them, in our layout (vlp.models.open_clip_layout)
    for name in ("logit_scale", "ln_final.weight", "ln_final.bias", "token_embedding.weight",
                 "positional_embedding", "visual.class_embedding",
                 "transformer.resblocks.0.attn.in_proj_bias"):
        assert from_open_clip_key(name) in no_decay, name
    for name in ("transformer.resblocks.0.attn.in_proj_weight", "visual.conv1.weight",
                 "text_projection", "visual.proj"):
        assert from_open_clip_key(name) in decay, name
    # the same groups as under open_clip's names (what checkpoints before the model had named parts were trained with)
    as_open_clip = build_optimizer(open_clip_model(model), OptimConfig(weight_decay=0.2))
    for ours, theirs in zip(opt.param_groups, as_open_clip.param_groups):
        assert {id(p) for p in ours["params"]} == {id(p) for p in theirs["params"]}


def test_warmup_then_cosine_values():
    cfg = OptimConfig(warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_factor(s, 14, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 14, cfg) == pytest.approx(1.0)
    # halfway through the 10 decay steps: min + (1 - min) * 0.5
    assert lr_factor(9, 14, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(14, 14, cfg) == pytest.approx(0.1)
    assert lr_factor(100, 14, cfg) == pytest.approx(0.1)
    assert lr_factor(6, 14, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)))


def test_constant_schedule_after_warmup():
    cfg = OptimConfig(warmup_steps=2, schedule="constant")
    assert [lr_factor(s, 10, cfg) for s in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]


def test_linear_schedule_after_warmup_falls_on_a_straight_line():
    cfg = OptimConfig(warmup_steps=2, schedule="linear", min_lr_ratio=0.0)
    assert [lr_factor(s, 12, cfg) for s in range(2)] == [0.5, 1.0]
    assert [lr_factor(s, 12, cfg) for s in (2, 7, 12, 20)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    floor = OptimConfig(warmup_steps=0, schedule="linear", min_lr_ratio=0.2)
    assert lr_factor(5, 10, floor) == pytest.approx(0.2 + 0.8 * 0.5)


def _params_with_grads(seed, scale):
    g = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(*shape, generator=g)) for shape in ((40, 30), (30,), (7, 5, 3))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * scale
    return params


@pytest.mark.parametrize("scale", [10.0, 0.01])  # the global norm above the limit (clipped), and below it
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_clipping_inside_the_fused_step_equals_clip_then_step(scale, weight_decay):
    """step_with_clipped_gradients applies clip_grad_norm_'s factor inside the fused AdamW kernel:
    the same parameters, moments and clipped gradients (up to float rounding) over three steps."""
    plain, fused = _params_with_grads(0, scale), _params_with_grads(0, scale)
    opt_plain = torch.optim.AdamW(plain, lr=1e-2, weight_decay=weight_decay, fused=True)
    opt_fused = torch.optim.AdamW(fused, lr=1e-2, weight_decay=weight_decay, fused=True)
    for step in range(3):
        for a, b, fresh in zip(plain, fused, _params_with_grads(step + 1, scale)):
            a.grad, b.grad = fresh.grad.clone(), fresh.grad.clone()
        norm = torch.nn.utils.clip_grad_norm_(plain, 1.0)
        opt_plain.step()
        assert torch.allclose(step_with_clipped_gradients(opt_fused, fused, 1.0), norm)
        assert not hasattr(opt_fused, "grad_scale")  # the factor applies to this step only
        for a, b in zip(plain, fused):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-5)
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(opt_fused.state[b][key], opt_plain.state[a][key], atol=1e-6, rtol=1e-5)
    if scale > 1:
        assert norm > 1.0  # the case clipped


def test_the_training_step_clips_inside_the_fused_kernel_through_accelerates_wrapper(monkeypatch):
    """Precision.step on accelerate's AcceleratedOptimizer takes the folded path (accelerate's
    clip_grad_norm_, the separate multiply pass, is not called) with the clip-then-step result."""
    from accelerate import Accelerator

    from vlp.train.precision import Precision

    accelerator = Accelerator(cpu=True)
    reference, model = _params_with_grads(0, 10.0), nn.ParameterList(_params_with_grads(0, 10.0))
    opt_reference = torch.optim.AdamW(reference, lr=1e-2, fused=True)
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True))
    monkeypatch.setattr(accelerator, "clip_grad_norm_", lambda *a, **k: pytest.fail("the unfolded path ran"))
    assert Precision(accelerator, "fp32").step(optimizer, model.parameters(), 1.0)
    torch.nn.utils.clip_grad_norm_(reference, 1.0)
    opt_reference.step()
    for a, b in zip(reference, model.parameters()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
