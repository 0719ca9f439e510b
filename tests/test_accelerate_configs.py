"""The launch configs in configs/accelerate/ are what accelerate reads them as: each parses with
accelerate's own config loader, names only options ``accelerate launch`` knows, and gives the
environment (and from it the FSDP / DeepSpeed plugin) the header comment promises. Also the
engine-side checks of vlp/train/accelerator.py that need no second process: a sharding request
accelerate does not grant (any CPU) is refused, 0-dim parameters become FSDP2-shardable vectors,
DeepSpeed's ``auto`` entries are filled from the run config. Nothing here needs a GPU or DeepSpeed."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Dict

import pytest
import torch
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

sys.path.insert(0, os.path.dirname(__file__))
from conftest import ROOT  # noqa: E402
from tiny_arch import TINY_ARCH  # noqa: E402

from vlp.config import load_config  # noqa: E402
from vlp.errors import ConfigError  # noqa: E402
from vlp.train import accelerator as acc  # noqa: E402

CONFIGS = ROOT / "configs" / "accelerate"
EXPECTED = {"ddp.yaml": DistributedType.MULTI_GPU, "fsdp.yaml": DistributedType.FSDP,
            "fsdp_hybrid.yaml": DistributedType.FSDP, "deepspeed_zero2.yaml": DistributedType.DEEPSPEED,
            "deepspeed_zero3.yaml": DistributedType.DEEPSPEED}


@pytest.fixture(autouse=True)
def _no_sharding_request(monkeypatch):
    """No ACCELERATE_USE_FSDP / _DEEPSPEED from the calling shell (or left by an earlier Accelerator)."""
    for flag in acc.REQUESTS:
        monkeypatch.delenv(flag, raising=False)


def launch_environment(config_file: Path) -> Dict[str, str]:
    """The environment ``accelerate launch --config_file config_file train.py`` gives each process
    (accelerate's launch_command up to the point where it starts the launcher)."""
    args = launch_command_parser().parse_args(["--config_file", str(config_file), "train.py", "--config",
                                               "configs/tiny.yaml"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before deepspeed_launcher
        fields = list(defaults.deepspeed_config.keys()) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


def test_every_config_is_shipped_and_parses_with_accelerates_loader():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)
    known = set(vars(launch_command_parser().parse_args(["train.py"])))
    for name, kind in EXPECTED.items():
        config = load_config_from_file(str(CONFIGS / name))
        assert isinstance(config, ClusterConfig) and config.distributed_type == kind, name
        assert config.num_processes > 1 and not config.use_cpu, name
        # nested options are copied onto the launch arguments by name; an unknown one would be ignored
        nested = {**(config.fsdp_config or {}), **(config.deepspeed_config or {}), **(config.parallelism_config or {})}
        assert not set(nested) - known, (name, set(nested) - known)


def test_each_header_gives_the_launch_command_and_the_global_batch():
    for name in EXPECTED:
        text = (CONFIGS / name).read_text()
        command = re.search(r"^#\s+(accelerate launch --config_file (\S+) .*train\.py --config (\S+).*)$", text, re.M)
        assert command, name
        assert command.group(2) == f"configs/accelerate/{name}" and (ROOT / command.group(3)).is_file(), name
        assert "Global batch per optimizer step = train.batch_size x num_processes" in text, name


def test_fsdp_config_gives_fsdp2_wrapping_each_residual_attention_block(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from open_clip.transformer import ResidualAttentionBlock

    from vlp.models.dual_encoder import DualEncoder

    for name in ("fsdp.yaml", "fsdp_hybrid.yaml"):
        env = launch_environment(CONFIGS / name)
        assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2", name
        assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT" and env["FSDP_RESHARD_AFTER_FORWARD"] == "true", name
        for key in [k for k in os.environ if k.startswith("FSDP_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            if key.startswith("FSDP_"):
                monkeypatch.setenv(key, value)
        plugin = FullyShardedDataParallelPlugin()  # as Accelerator() builds it from that environment
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        model = DualEncoder(TINY_ARCH)
        plugin.set_auto_wrap_policy(model)
        wraps = fsdp2_prepare_auto_wrap_policy(plugin, model)
        blocks = [m for m in model.modules() if isinstance(m, ResidualAttentionBlock)]
        assert blocks and [m for m in model.modules() if wraps(m)] == blocks
    hybrid = launch_environment(CONFIGS / "fsdp_hybrid.yaml")
    assert int(hybrid["PARALLELISM_CONFIG_DP_REPLICATE_SIZE"]) * int(hybrid["PARALLELISM_CONFIG_DP_SHARD_SIZE"]) == \
        load_config_from_file(str(CONFIGS / "fsdp_hybrid.yaml")).num_processes


def test_deepspeed_configs_give_their_zero_stage_and_the_engine_fills_the_autos(monkeypatch):
    from accelerate.utils import DeepSpeedPlugin

    cfg = load_config("configs/tiny.yaml", ["train.batch_size=48", "optim.grad_clip_norm=0.5"])
    for name, stage in (("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)):
        env = launch_environment(CONFIGS / name)
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(stage)
        for key, value in env.items():
            if key.startswith("ACCELERATE_DEEPSPEED") or key == "ACCELERATE_GRADIENT_ACCUMULATION_STEPS":
                monkeypatch.setenv(key, value)
        plugin = DeepSpeedPlugin()  # as Accelerator() builds it from that environment (deepspeed itself not needed)
        ds = plugin.deepspeed_config
        assert ds["zero_optimization"]["stage"] == stage
        if stage == 3:
            assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
        acc.fill_deepspeed_config(ds, cfg)
        assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["gradient_clipping"]) == \
            (48, 1, 0.5)
    with pytest.raises(ConfigError, match="gradient_accumulation_steps"):
        acc.fill_deepspeed_config({"gradient_accumulation_steps": 4}, cfg)
    explicit = {"train_micro_batch_size_per_gpu": 7, "gradient_clipping": 2.0}
    acc.fill_deepspeed_config(explicit, cfg)
    assert explicit["train_micro_batch_size_per_gpu"] == 7 and explicit["gradient_clipping"] == 2.0


def test_a_sharding_request_accelerate_does_not_grant_is_refused_not_run_as_ddp(monkeypatch):
    """On a CPU accelerate sets up plain (or no) data parallelism even under ACCELERATE_USE_FSDP:
    accelerate/state.py only takes FSDP for the MULTI_GPU family of distributed types."""
    cfg = load_config("configs/tiny.yaml")
    for flag in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.setenv(flag, "true")
        granted = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, device=torch.device("cpu"))
        with pytest.raises(ConfigError, match="accelerate runs FSDP and DeepSpeed only on GPUs"):
            acc.check_distribution(granted, cfg)
        monkeypatch.delenv(flag)
    acc.check_distribution(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, device="cpu"), cfg)


def test_what_a_sharded_run_cannot_train_is_refused():
    def fsdp(version):
        return SimpleNamespace(distributed_type=DistributedType.FSDP, device="cuda",
                               state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=version)))

    def zero(stage):
        return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, device="cuda",
                               state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=stage)))

    def cfg(*overrides):
        return load_config("configs/tiny.yaml", ["eval.at_end=false", *overrides])

    with pytest.raises(ConfigError, match="fsdp_version"):
        acc.check_distribution(fsdp(1), cfg())
    for granted in (fsdp(2), zero(3)):
        acc.check_distribution(granted, cfg())
        with pytest.raises(ConfigError, match="train.ema_decay"):
            acc.check_distribution(granted, cfg("train.ema_decay=0.999"))
        with pytest.raises(ConfigError, match="eval.at_end=false"):  # the evaluation reads unsharded weights
            acc.check_distribution(granted, cfg("eval.at_end=true"))
    acc.check_distribution(zero(2), cfg("train.ema_decay=0.999", "eval.at_end=true"))
    with pytest.raises(ConfigError, match="train.accum_steps"):
        acc.check_distribution(zero(2), cfg("train.accum_steps=2"))
    acc.check_distribution(fsdp(2), cfg("train.accum_steps=2"))


def test_scalar_parameters_become_one_element_vectors_in_model_and_optimizer():
    from vlp.models.dual_encoder import DualEncoder
    from vlp.train.optim import build_optimizer

    model = DualEncoder(TINY_ARCH)
    optimizer = build_optimizer(model, load_config("configs/tiny.yaml").optim)
    before = model.logit_head.logit_scale.detach().clone()
    names = acc.vectorise_scalars(model, optimizer)
    assert names == ["logit_head.logit_scale"]
    assert model.logit_head.logit_scale.shape == (1,) and torch.equal(model.logit_head.logit_scale[0], before)
    assert all(p.dim() > 0 for p in model.parameters())
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    assert acc.full_value(model.logit_head.scale()) == pytest.approx(before.exp().item())
    images, texts = torch.randn(2, 3, 16, 16), torch.randint(1, 64, (2, 8))
    assert model(images, texts)["logit_scale"].numel() == 1
