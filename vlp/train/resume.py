"""Whether a run directory may be continued by a config, and where its data stream picks up.

A run is resumed only when the saved config agrees with the new one on everything that changes
what is trained: model, data, loss, optimizer, batch and world size. Knobs that only say how long
to train, how often to log or checkpoint, where to evaluate, or how fast to load may differ
(``RESUMABLE_KEYS``). Anything else stops the run before any work, naming the differing keys.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vlp.checkpoints import load_checkpoint, newest_for_resume
from vlp.config import Config, ConfigError, config_from_yaml
from vlp.models.open_clip_layout import OLD_PREFIX, as_vlp_state, open_clip_model
from vlp.train.run_dir import RunDir

log = logging.getLogger(__name__)

RESUMABLE_KEYS = (
    "train.steps", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.resume",
    "train.threads", "train.run_name", "train.output_dir", "train.checkpoint_minutes", "train.report_to", "train.plot",
    "train.compile", "train.channels_last", "train.retain_freed_memory", "data.workers", "data.skip_log_interval_s", "eval.",
    "model.init_from", "model.init_image_from", "model.init_text_from", "model.pretrained", "model.grad_checkpointing",
)
"""Keys (or prefixes ending in '.') that a resumed run may change: length, logging, evaluation, loader speed,
where the first weights came from (a resume loads its own checkpoint), gradient checkpointing
(the same gradients, less memory), compilation, memory format and host allocator (the same model, run
faster)."""

WAYS_OUT = "choose a new train.run_name, or train.resume=false to start this run over (its old files are kept aside)"


class ResumeError(ConfigError):
    """A run directory that the new config cannot continue; the message names the differences."""


def flatten(value: Any, prefix: str = "") -> Dict[str, Any]:
    """Dotted leaves of nested dicts and lists: {'loss.terms[0].weight': 1.0, ...}."""
    if isinstance(value, Mapping) and value:
        out: Dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and any(isinstance(v, (Mapping, list)) for v in value):
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{index}]"))
        return out
    return {prefix: value}


def _resumable(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_KEYS)


def _as_tree(cfg_or_yaml: Config | str) -> Dict[str, Any]:
    """A config (or a saved config's YAML) as plain nested containers, in its validated form when
    it still validates (so 'no' and 'fp32' compare equal), else as written over today's defaults."""
    if isinstance(cfg_or_yaml, str):
        try:
            cfg_or_yaml = config_from_yaml(cfg_or_yaml)
        except ConfigError:
            try:
                merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(cfg_or_yaml))
            except OmegaConfBaseException:
                merged = OmegaConf.create(cfg_or_yaml)
            return OmegaConf.to_container(merged)  # type: ignore[return-value]
    return OmegaConf.to_container(OmegaConf.structured(cfg_or_yaml))  # type: ignore[return-value]


def config_differences(saved: Config | str, new: Config | str) -> List[Tuple[str, Any, Any]]:
    """(key, saved value, new value) for every key that differs and changes what is trained."""
    old, now = flatten(_as_tree(saved)), flatten(_as_tree(new))
    missing = object()
    return [(key, old.get(key, missing), now.get(key, missing)) for key in sorted(set(old) | set(now))
            if not _resumable(key) and old.get(key, missing) != now.get(key, missing)]


def _show(value: Any) -> str:
    return "(absent)" if type(value) is object else repr(value)


def check_resumable(run_root: Any, saved_yaml: str, cfg: Config, saved_world: Optional[int], world: int) -> None:
    """Raise ResumeError unless ``cfg`` on ``world`` processes may continue the run saved as ``saved_yaml``."""
    diffs = [f"  {key}: {_show(old)} -> {_show(new)}" for key, old, new in config_differences(saved_yaml, cfg)]
    if saved_world is not None and saved_world != world:
        diffs.append(f"  world size (processes): {saved_world} -> {world}")
    if diffs:
        raise ResumeError(f"run directory {run_root} holds a run with another setup, so it cannot be resumed:\n"
                          + "\n".join(diffs) + f"\nTo train anyway, {WAYS_OUT}.")


def check_target(run_root: Any, reached: int, target: int) -> None:
    """A resume point past ``train.steps`` is an error (the run would train nothing and mislabel its result)."""
    if reached > target:
        raise ResumeError(f"run directory {run_root} is already at step {reached}, past train.steps={target}: "
                          f"raise train.steps above {reached} to continue it, or {WAYS_OUT}.")


def saved_world_size(state: Mapping[str, Any]) -> Optional[int]:
    """Processes that wrote the checkpoint (None for checkpoints written before it was recorded)."""
    return int(state["world_size"]) if "world_size" in state else None


def resume_epoch(samples_seen: int, samples_per_epoch: Optional[int], resampled: bool) -> int:
    """Where a resumed run's data stream starts. Epoch mode: the epoch the checkpoint was in (its
    shard permutation from the start, as open_clip resumes), or epoch 0 (warned) when the epoch
    size is unknown. Resampled mode: a fresh draw sequence keyed by the samples seen."""
    if resampled:
        return samples_seen  # unique per resume point: never replays an earlier run's draws
    if samples_per_epoch:
        return samples_seen // samples_per_epoch
    if samples_seen:
        log.warning("epoch size unknown (no sizes.json and no data.num_samples): the resumed run reads the data "
                    "from the start of epoch 0 again")
    return 0


def previous_run(run: RunDir, cfg: Config, world: int) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The checkpoint to continue from, as (path, state), once every check passed; None to start anew.
    Reads only: a refused resume leaves the run directory exactly as it was."""
    if cfg.train.resume == "false":
        return None
    if cfg.train.resume != "auto":
        return _named_checkpoint(Path(cfg.train.resume), run, cfg, world)
    newest = newest_for_resume(run.checkpoints)
    if newest is not None:
        path, state = newest
        check_resumable(run.root, str(state.get("config", "")), cfg, saved_world_size(state), world)
        check_target(run.root, int(state["step"]), cfg.train.steps)
        return newest
    if run.config_path.is_file():  # a run that stopped before its first checkpoint
        check_resumable(run.root, run.config_path.read_text(), cfg, None, world)
    return None


def _named_checkpoint(path: Path, run: RunDir, cfg: Config, world: int) -> Tuple[Path, Dict[str, Any]]:
    """``train.resume=PATH``: that checkpoint file, or the newest of that run directory, once it passes the checks."""
    if path.is_dir():
        found = newest_for_resume(path / "checkpoints" if (path / "checkpoints").is_dir() else path)
        if found is None:
            raise ResumeError(f"train.resume={path}: no checkpoint there to resume from")
    elif path.is_file():
        try:
            found = (path, load_checkpoint(path))
        except Exception as err:  # a truncated or foreign file: say which
            raise ResumeError(f"train.resume={path}: cannot read it as a checkpoint ({type(err).__name__}: {err})") from None
    else:
        raise ResumeError(f"train.resume={path}: no such file or directory (use 'auto', 'false' or a checkpoint path)")
    check_resumable(path, str(found[1].get("config", "")), cfg, saved_world_size(found[1]), world)
    check_target(path, int(found[1]["step"]), cfg.train.steps)
    return found


def reorder_optimizer_state(saved: Mapping[str, Any], optimizer: Any, saved_order: Sequence[Any]) -> Dict[str, Any]:
    """``saved``, an optimizer state dict written when the parameters came in ``saved_order``,
    renumbered for ``optimizer`` (the same parameters and groups, in today's order)."""
    numbers = {id(p): i for i, p in enumerate(p for group in optimizer.param_groups for p in group["params"])}
    states: Dict[int, Any] = {}
    groups = []
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"]):
        members = {id(p) for p in group["params"]}
        then = [p for p in saved_order if id(p) in members]
        for param, old in zip(then, saved_group["params"]):
            if old in saved["state"]:
                states[numbers[id(param)]] = saved["state"][old]
        groups.append({**saved_group, "params": [numbers[id(p)] for p in group["params"]]})
    return {**saved, "state": states, "param_groups": groups}


def _saved_before_parts(state: Mapping[str, Any]) -> bool:
    """A checkpoint written before the model had named parts: open_clip's names under 'clip.', parameters in open_clip's order."""
    model = state.get("model")
    return isinstance(model, Mapping) and any(str(k).startswith(OLD_PREFIX) for k in model)


def load_states(path: Path, state: Mapping[str, Any], **targets: Any) -> None:
    """``targets[name].load_state_dict(state[name])`` for each, with a clear error when the model does not fit.
    The ``model`` entry is read in any layout ``vlp.models.open_clip_layout.as_vlp_state`` takes; a
    checkpoint written before the model had named parts (open_clip's names under 'clip.') numbered the optimizer's
    parameters in open_clip's order, which is renumbered for today's."""
    old = _saved_before_parts(state)
    for name, target in targets.items():
        if target is None or state.get(name) is None:
            continue
        saved = as_vlp_state(state[name]) if name == "model" else state[name]
        if name == "optimizer" and old and targets.get("model") is not None:
            saved = reorder_optimizer_state(saved, target, list(open_clip_model(targets["model"]).parameters()))
        try:
            target.load_state_dict(saved)
        except (RuntimeError, KeyError, ValueError) as err:
            first = str(err).strip().splitlines()[0]
            raise ResumeError(f"checkpoint {path} does not fit the configured {name} ({first}); {WAYS_OUT}.") from None
