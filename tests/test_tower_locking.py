"""Locking (LiT): locked parameters get no gradient and stay put through an optimizer step, the
unlocked ones train; towers that cannot lock are refused naming the key; torchrun trains a locked tower."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from tiny_arch import TINY_ARCH  # noqa: E402

from conftest import ROOT  # noqa: E402
from vlp.config import ConfigError, ModelConfig, OptimConfig  # noqa: E402
from vlp.losses.contrastive import clip_loss  # noqa: E402
from vlp.models.factory import build_model  # noqa: E402
from vlp.models.towers import TOWERS, ImageTower  # noqa: E402
from vlp.train.optim import build_optimizer  # noqa: E402

ARCH = copy.deepcopy(TINY_ARCH)
ARCH["vision_cfg"]["layers"] = ARCH["text_cfg"]["layers"] = 3


def _one_step(model):
    """Parameters before and after one AdamW step on a contrastive loss, by name."""
    optimizer = build_optimizer(model, OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    out = model(torch.randn(4, 3, 16, 16, generator=g), torch.randint(1, 64, (4, 8), generator=g))
    clip_loss(out["image_emb"], out["text_emb"], out["logit_scale"]).backward()
    optimizer.step()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return before, dict(model.named_parameters()), in_optimizer


def _changed(before, after):
    return {n for n in before if not torch.equal(before[n], after[n].detach())}


def test_an_image_tower_with_unlocked_groups_trains_only_those():
    model = build_model(ModelConfig(arch=ARCH, lock_image=True, lock_image_unlocked_groups=2))
    before, after, in_optimizer = _one_step(model)
    image = {n for n in before if n.startswith("image_tower.")}
    # 3 blocks: groups stem, block 0, block 1, [block 2 + ln_post], proj; the last two stay trainable
    unlocked = {n for n in image if n.startswith(("image_tower.visual.transformer.resblocks.2.",
                                                  "image_tower.visual.ln_post.")) or n == "image_tower.visual.proj"}
    assert unlocked and {n for n in image if after[n].requires_grad} == unlocked
    assert _changed(before, after) & image == unlocked  # the locked ones stayed bitwise, the unlocked moved
    assert all(n.startswith("text_tower.") or n.startswith("logit_head.") or n in unlocked
               for n in _changed(before, after))
    assert {n for n in before if n.startswith("text_tower.")} <= _changed(before, after)
    assert all((id(after[n]) in in_optimizer) == after[n].requires_grad for n in after)  # no state for locked ones


def test_a_text_tower_with_unlocked_layers_trains_only_those():
    model = build_model(ModelConfig(arch=ARCH, lock_text=True, lock_text_unlocked_layers=1))
    before, after, _ = _one_step(model)
    text = {n for n in before if n.startswith("text_tower.")}
    assert {n for n in text if after[n].requires_grad} == {"text_tower.text_projection"}  # the last group
    assert _changed(before, after) & text == {"text_tower.text_projection"}
    assert {n for n in before if n.startswith("image_tower.")} <= _changed(before, after)
    whole = build_model(ModelConfig(arch=ARCH, lock_text=True, lock_image=True))
    assert [n for n, p in whole.named_parameters() if p.requires_grad] == ["logit_head.logit_scale"]


class _Plain(ImageTower):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 16)

    @property
    def image_size(self):
        return 16

    def forward(self, pixels):
        return self.proj(pixels.mean(dim=(2, 3)))


def test_locking_what_cannot_be_locked_names_the_key(monkeypatch):
    monkeypatch.setitem(TOWERS["image"], "plain", lambda arch, quick_gelu: _Plain())
    with pytest.raises(ConfigError, match=r"model.lock_image: the image tower 'plain' \(_Plain\) cannot be locked"):
        build_model(ModelConfig(arch=ARCH, image_tower="plain", lock_image=True))
    with pytest.raises(ConfigError, match="model.lock_image: .* has 5 layer groups, fewer than the 6 to leave unlocked"):
        build_model(ModelConfig(arch=ARCH, lock_image=True, lock_image_unlocked_groups=6))
    with pytest.raises(ConfigError, match="model.lock_image: .*no BatchNorm statistics"):
        build_model(ModelConfig(arch=ARCH, lock_image=True, lock_image_freeze_bn_stats=True))
    with pytest.raises(ConfigError, match="model.lock_text: .*keep lock_text_freeze_layer_norm true"):
        build_model(ModelConfig(arch=ARCH, lock_text=True, lock_text_freeze_layer_norm=False))
    with pytest.raises(ConfigError, match="model.lock_image_unlocked_groups: applies only with model.lock_image=true"):
        ModelConfig(arch=ARCH, lock_image_unlocked_groups=1)
    with pytest.raises(ConfigError, match="model.lock_text_unlocked_layers: must be >= 0"):
        ModelConfig(arch=ARCH, lock_text=True, lock_text_unlocked_layers=-1)


TINY_OVERRIDES = [
    "model.arch.vision_cfg.image_size=32", "model.arch.vision_cfg.width=64", "model.arch.vision_cfg.layers=2",
    "model.arch.text_cfg.width=64", "model.arch.text_cfg.layers=2", "model.arch.embed_dim=32",
    "train.batch_size=8", "train.log_every=2", "optim.warmup_steps=1", "data.shuffle_buffer=64",
]


@pytest.mark.slow
def test_torchrun_two_processes_train_with_a_locked_image_tower(shapes_dir, tmp_path, cli_env):
    from accelerate.utils import set_seed

    from vlp.config import load_config

    overrides = [f"data.train_shards={shapes_dir}/train", f"train.output_dir={tmp_path}", "train.run_name=lit",
                 "train.steps=4", "eval.at_end=false", "data.workers=1", "model.lock_image=true", *TINY_OVERRIDES]
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
            "train.py", "--config", "configs/tiny.yaml", *overrides]
    proc = subprocess.run(args, cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    steps = [json.loads(line)["step"] for line in (tmp_path / "lit/metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4]
    final = torch.load(tmp_path / "lit/checkpoints/final.pt", weights_only=True)
    assert final["step"] == 4 and final["world_size"] == 2
    set_seed(0)  # train.seed: the run's initial weights
    start = build_model(load_config(ROOT / "configs/tiny.yaml", overrides).model).state_dict()
    image = [k for k in start if k.startswith("image_tower.")]
    text = [k for k in start if k.startswith("text_tower.")]
    assert all(torch.equal(final["model"][k], start[k]) for k in image)  # locked: as initialised
    assert not all(torch.equal(final["model"][k], start[k]) for k in text)  # trained
