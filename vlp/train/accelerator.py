"""The Accelerator of a run, placing the model and optimizer under it, and the model and optimizer
states a checkpoint holds under it.

Distribution is accelerate's alone: DDP under ``torchrun`` (gloo on CPU, NCCL on GPU), and FSDP2 or
DeepSpeed from an ``accelerate launch --config_file configs/accelerate/...`` file (see
docs/DISTRIBUTED.md). What accelerate leaves to its caller is done here:

- accelerate turns FSDP and DeepSpeed on only for GPU-like devices (accelerate/state.py,
  ``AcceleratorState.__init__``: FSDP only for the MULTI_GPU family, DeepSpeed only when not
  ``cpu``); on a CPU a launch config asking for them would silently train with DDP, so
  :func:`make_accelerator` stops with a ConfigError instead.
- FSDP2 (``torch.distributed.fsdp.fully_shard``) shards every parameter on dim 0 and refuses 0-dim
  ones (torch/distributed/fsdp/_fully_shard/_fsdp_init.py ``_verify_managed_param``), which the
  temperature ``logit_head.logit_scale`` (and SigLIP's bias) is; :func:`prepare_model_and_optimizer`
  makes each such parameter a 1-element vector before accelerate shards the model and the
  checkpoint states turn them back, so a checkpoint looks the same under DDP and FSDP.
- accelerate's FSDP2 prepare swaps the optimizer's parameters for their shards but not its state
  (accelerate/utils/fsdp_utils.py ``fsdp2_switch_optimizer_parameters``), so a resumed run's
  AdamW moments, loaded before ``prepare``, are put back into the sharded optimizer after it.

The state functions are collective: every rank calls them, so a sharded model gathers its full
state; rank 0 gets it (other ranks may get an empty dict) and writes the checkpoint.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from vlp.config import Config
from vlp.errors import ConfigError
from vlp.train.precision import accelerate_precision

log = logging.getLogger(__name__)

REQUESTS = {"ACCELERATE_USE_FSDP": DistributedType.FSDP, "ACCELERATE_USE_DEEPSPEED": DistributedType.DEEPSPEED}
"""The environment flags ``accelerate launch`` sets for a config file's ``distributed_type``."""
VECTORISED = "_vlp_vectorised_scalars"  # attribute of an FSDP2 model: names of the 0-dim parameters made 1-element


def make_accelerator(cfg: Config) -> Accelerator:
    """The run's Accelerator: the precision accelerate runs for ``train.precision`` (see
    vlp/train/precision.py); ``cpu=True`` without a GPU, which makes accelerate use gloo (MULTI_CPU)
    under torchrun. FSDP and DeepSpeed come from the environment ``accelerate launch`` sets; a
    request accelerate did not grant, or a run setting they cannot train, is a ConfigError."""
    on_cpu = not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=accelerate_precision(cfg.train.precision, on_cpu), cpu=on_cpu)
    check_distribution(accelerator, cfg)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        fill_deepspeed_config(accelerator.state.deepspeed_plugin.deepspeed_config, cfg)
    return accelerator


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def check_distribution(accelerator: Accelerator, cfg: Config) -> None:
    """ConfigError when the launch asked for FSDP or DeepSpeed and accelerate set up something else,
    or when the run uses what the sharded setup cannot train."""
    granted = accelerator.distributed_type
    for flag, kind in REQUESTS.items():
        if _flag(flag) and granted != kind:
            raise ConfigError(
                f"the launch asks for {kind.value} ({flag}=true, from an accelerate config file) but accelerate set up "
                f"{granted.value} on {accelerator.device}: accelerate runs FSDP and DeepSpeed only on GPUs, and here "
                f"it would train with plain data parallelism. Launch on GPUs, or train data-parallel with torchrun "
                f"(docs/DISTRIBUTED.md).")
    if granted == DistributedType.FSDP and accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise ConfigError("fsdp_config.fsdp_version: only FSDP2 is supported (fsdp_version: 2, as in "
                          "configs/accelerate/fsdp.yaml)")
    zero3 = granted == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3
    sharded = "ZeRO-3" if zero3 else "FSDP" if granted == DistributedType.FSDP else None
    if sharded and cfg.train.ema_decay:
        raise ConfigError(f"train.ema_decay: the weight average needs the full weights on every rank, which "
                          f"{sharded} shards; use train.ema_decay=null, DDP or ZeRO-2")
    if sharded and cfg.eval.at_end:
        raise ConfigError(f"eval.at_end: the end-of-training evaluation reads the full weights, which {sharded} "
                          f"shards; use eval.at_end=false and evaluate the final checkpoint afterwards "
                          f"(python -m eval builtin --model RUN_DIR ...; docs/DISTRIBUTED.md)")
    if granted == DistributedType.DEEPSPEED and cfg.train.accum_steps > 1:
        raise ConfigError("train.accum_steps: under DeepSpeed every backward pass also steps the optimizer, so "
                          "gradient caching over micro-batches cannot run; use train.accum_steps=1")


def fill_deepspeed_config(ds_config: Dict[str, Any], cfg: Config) -> None:
    """Fill the DeepSpeed config's ``auto`` entries accelerate cannot fill itself: the engine
    prepares no dataloader, so the per-GPU batch is ``train.batch_size``; one backward per
    optimizer step; gradient clipping (which DeepSpeed does inside its step) at
    ``optim.grad_clip_norm`` (0: none)."""
    wanted = {"train_micro_batch_size_per_gpu": cfg.train.batch_size, "gradient_accumulation_steps": 1,
              "gradient_clipping": float(cfg.optim.grad_clip_norm or 0.0)}
    for key, value in wanted.items():
        if ds_config.get(key, "auto") == "auto":
            ds_config[key] = value
    if ds_config["gradient_accumulation_steps"] != 1:
        raise ConfigError("deepspeed_config.gradient_accumulation_steps: must be 1 (train.accum_steps does "
                          "gradient caching instead)")


def is_fsdp2(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP and accelerator.state.fsdp_plugin.fsdp_version == 2


def vectorise_scalars(model: nn.Module, optimizer: torch.optim.Optimizer) -> List[str]:
    """Make every 0-dim parameter of ``model`` a 1-element vector holding the same value (FSDP2
    shards only along dim 0), in the model and in the optimizer's groups; their names."""
    swapped: Dict[int, nn.Parameter] = {}
    names = []
    for module_name, module in model.named_modules():
        for name, param in list(module._parameters.items()):
            if param is None or param.dim() != 0:
                continue
            if id(param) not in swapped:
                swapped[id(param)] = nn.Parameter(param.detach().reshape(1).clone(), requires_grad=param.requires_grad)
            module._parameters[name] = swapped[id(param)]
            names.append(f"{module_name}.{name}" if module_name else name)
    for group in optimizer.param_groups:
        group["params"] = [swapped.get(id(p), p) for p in group["params"]]
    return names


def _parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> List[str]:
    """The name of each optimizer parameter, in the order ``optimizer.state_dict()`` numbers them."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _reshaped(state: Mapping[str, Any], shape: Tuple[int, ...]) -> Dict[str, Any]:
    """One parameter's optimizer state with its per-element tensors (not AdamW's 0-dim ``step``) in ``shape``."""
    return {k: v.reshape(shape) if isinstance(v, torch.Tensor) and k != "step" else v for k, v in state.items()}


def prepare_model_and_optimizer(accelerator: Accelerator, model: nn.Module,
                                optimizer: torch.optim.Optimizer) -> Tuple[Any, Any]:
    """``accelerator.prepare(model, optimizer)``, with a model and optimizer state already loaded
    (a resume) kept. Under FSDP2 the 0-dim parameters become 1-element vectors first, and the
    optimizer state loaded before is set again into the sharded optimizer."""
    if not is_fsdp2(accelerator):
        return accelerator.prepare(model, optimizer)
    names = _parameter_names(model, optimizer)
    loaded = optimizer.state_dict() if optimizer.state else None
    optimizer.state.clear()  # accelerate would orphan it: the sharded parameters start with no state
    scalars = vectorise_scalars(model, optimizer)
    model, optimizer = accelerator.prepare(model, optimizer)
    setattr(accelerator.unwrap_model(model), VECTORISED, scalars)
    if loaded is not None:
        _set_sharded_optimizer_state(model, optimizer, loaded, names, set(scalars))
    return model, optimizer


def _set_sharded_optimizer_state(model: Any, optimizer: Any, loaded: Mapping[str, Any], names: List[str],
                                 scalars: set) -> None:
    """Set ``loaded`` (a full, index-keyed optimizer state dict, on every rank) into the sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    by_name = {"state": {names[i]: _reshaped(s, (1,)) if names[i] in scalars else dict(s)
                         for i, s in loaded["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in loaded["param_groups"]]}
    set_optimizer_state_dict(model, _torch_optimizer(optimizer), by_name, options=StateDictOptions(full_state_dict=True))


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    while hasattr(optimizer, "optimizer") and not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer  # accelerate's AcceleratedOptimizer
    return optimizer


def _vectorised(accelerator: Accelerator, model: Any) -> set:
    return set(getattr(accelerator.unwrap_model(model), VECTORISED, ()))


def full_model_state(accelerator: Accelerator, model: Any) -> Dict[str, torch.Tensor]:
    """The unwrapped model's full state dict (collective; rank 0 writes it): under FSDP2 gathered
    to rank 0 on the CPU (an empty dict elsewhere), its 1-element temperature a scalar again."""
    if not is_fsdp2(accelerator):
        return accelerator.get_state_dict(model)
    state = accelerator.get_state_dict(accelerator.unwrap_model(model))
    for name in _vectorised(accelerator, model) & set(state):
        state[name] = state[name].reshape(())
    return state


def full_optimizer_state(accelerator: Accelerator, model: Any, optimizer: Any) -> Optional[Dict[str, Any]]:
    """The optimizer's full state dict as ``torch.optim.Optimizer.state_dict()`` numbers it (collective).
    FSDP2: gathered to rank 0 on the CPU (an empty dict elsewhere). DeepSpeed partitions it over
    the ranks (ZeRO-2 and -3): None, with a warning; a resume then starts the AdamW moments afresh."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        if accelerator.is_main_process:
            log.warning("DeepSpeed keeps the optimizer state partitioned over the ranks: the checkpoint holds the "
                        "full model but no optimizer state (a resume restarts the AdamW moments)")
        return None
    if not is_fsdp2(accelerator):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    full = get_optimizer_state_dict(accelerator.unwrap_model(model), _torch_optimizer(optimizer),
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not full:
        return {}
    order = [name for group in full["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(order)}
    scalars = _vectorised(accelerator, model)
    return {"state": {index[n]: _reshaped(s, ()) if n in scalars else s for n, s in full["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in full["param_groups"]]}


def full_value(tensor: torch.Tensor) -> float:
    """The Python number of a 1-element tensor, gathered first when it is a shard (an FSDP2
    parameter outside the forward; collective then: every rank calls it)."""
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().reshape(()).item()
