"""The training loop: one Accelerate loop over the endless shard stream.

Before any work: the run directory is checked (a resumed run must train the same thing on the
same number of processes, and not be past ``train.steps`` already; see vlp/train/resume.py), and
only then is its config written. Per step (:func:`_step`): move the batch to the device (images as
uint8) and normalise its images there, forward the model in the requested precision, sum the
configured objectives over its outputs dict, backward, clip, AdamW step, schedule step, clamp the
temperature. Every ``log_every`` steps a JSON line; every ``checkpoint_every`` steps an atomic
checkpoint; at the end a final checkpoint and the end-of-training evaluation, which the caller
hands in (``evaluate``; by default the one an installed application provides, see
vlp/train/evaluation.py). A step whose loss is not finite on any rank is skipped on all ranks and
counted; too many in a row stop the run with the last good checkpoint intact.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from tqdm import tqdm

from vlp.config import Config, config_to_yaml
from vlp.data.pipeline import epoch_samples, loader_from_config, train_sources
from vlp.data.skips import SkipReport
from vlp.data.transforms import normalize_on_device, train_transform
from vlp.losses.registry import compute_objective
from vlp.models.factory import build_model, count_parameters, model_tokenizer
from vlp.checkpoints import FINAL_NAME, prune_step_checkpoints, save_atomic
from vlp.train.evaluation import INSTALLED, EvaluateAtEnd, resolve_evaluation
from vlp.train.optim import build_optimizer, build_scheduler
from vlp.train.precision import Precision, accelerate_precision
from vlp.train.resume import load_states, previous_run, resume_epoch
from vlp.train.run_dir import RunDir, claim_default_run_name

MAX_NONFINITE_IN_A_ROW = 20
MODEL_INPUTS = ("image", "text", "neg_text", "image_aug", "text_aug")  # batch keys the model takes
IMAGE_INPUTS = ("image", "image_aug")  # uint8 pixels from the loader, normalised on the device


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class _Run:
    """Everything one training run holds between its steps."""

    cfg: Config
    accelerator: Accelerator
    precision: Precision
    model: Any
    unwrapped: Any
    optimizer: Any
    scheduler: Any
    transform: Any
    loader: Any
    run: RunDir
    samples_per_epoch: int
    step: int = 0
    samples_seen: int = 0
    skipped: SkipReport = field(default_factory=lambda: SkipReport(0))
    nonfinite_total: int = 0
    nonfinite_in_a_row: int = 0
    scaler_skipped: int = 0
    window_start: float = field(default_factory=time.perf_counter)
    window_samples: int = 0

    @property
    def global_batch(self) -> int:
        return self.cfg.train.batch_size * self.accelerator.num_processes


def _save(r: _Run, path: Path) -> None:
    if r.accelerator.is_main_process:
        state = {"model": r.accelerator.unwrap_model(r.model).state_dict(), "optimizer": r.optimizer.state_dict(),
                 "scheduler": r.scheduler.state_dict(), "grad_scaler": r.precision.state_dict(), "step": r.step,
                 "config": config_to_yaml(r.cfg), "samples_seen": r.samples_seen,
                 "world_size": r.accelerator.num_processes}
        save_atomic(state, path)
    r.accelerator.wait_for_everyone()


def _run_name(accelerator: Accelerator, cfg: Config, recipe: Optional[str]) -> str:
    """``train.run_name``, or one made from the recipe and the time on rank 0 and shared with every rank."""
    if cfg.train.run_name:
        return cfg.train.run_name
    name = [claim_default_run_name(cfg.train.output_dir, recipe) if accelerator.is_main_process else ""]
    if accelerator.num_processes > 1:
        broadcast_object_list(name, from_process=0)
    return name[0]


def _warn_about_setup(cfg: Config, accelerator: Accelerator) -> None:
    if cfg.optim.warmup_steps > cfg.train.steps:
        accelerator.print(f"warning: optim.warmup_steps={cfg.optim.warmup_steps} exceeds train.steps="
                          f"{cfg.train.steps}: the learning rate never reaches its peak optim.lr={cfg.optim.lr}")


def _any_rank(accelerator: Accelerator, flag: bool) -> bool:
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


def _sum_over_ranks(counts: Counter[str]) -> Dict[str, int]:
    total: Counter[str] = Counter()
    for part in gather_object([dict(counts)]):
        total.update(part)
    return dict(total)


def _prepare_run_dir(accelerator: Accelerator, run: RunDir, cfg: Config, resumed: bool, start_step: int) -> None:
    """Rank 0 moves aside what this run does not continue and writes the config; every rank waits."""
    accelerator.wait_for_everyone()  # every rank has read the old run before rank 0 changes its directory
    if accelerator.is_main_process:
        if resumed and run.rewind_metrics(start_step):
            print(f"metrics.jsonl lines after step {start_step} (trained again now) moved to metrics.superseded.jsonl")
        aside = run.set_aside() if not resumed else None
        if aside is not None:
            print(f"{run.root} held a run that is not resumed here (train.resume={str(cfg.train.resume).lower()} "
                  f"or no checkpoint yet); its files were moved to {aside}")
        run.create()
        run.save_config(cfg)
    accelerator.wait_for_everyone()


def _start(cfg: Config, recipe: Optional[str]) -> _Run | Path:
    """Build and place everything, resuming from the run directory when it allows; the run
    directory itself when there is nothing left to train."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    on_cpu = not torch.cuda.is_available()
    # cpu=True is what makes accelerate use gloo (MULTI_CPU) under torchrun when there is no GPU
    accelerator = Accelerator(mixed_precision=accelerate_precision(cfg.train.precision, on_cpu), cpu=on_cpu)
    precision = Precision(accelerator, cfg.train.precision)
    _warn_about_setup(cfg, accelerator)
    set_seed(cfg.train.seed)
    model = build_model(cfg.model)
    tokenizer = model_tokenizer(cfg.model, model)
    transform = train_transform(model.image_size, cfg.data.resize_scale, cfg.data.color_jitter)
    samples_per_epoch = cfg.data.num_samples or epoch_samples(train_sources(cfg.data))
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.train.steps, cfg.optim)

    run = RunDir.at(cfg, _run_name(accelerator, cfg, recipe))
    resume = previous_run(run, cfg, accelerator.num_processes)  # every check passes before anything is written
    step, samples_seen, start_epoch = 0, 0, 0
    if resume is not None:
        resume_from, state = resume
        load_states(resume_from, state, model=model, optimizer=optimizer, scheduler=scheduler, grad_scaler=precision)
        step = int(state["step"])
        samples_seen = int(state.get("samples_seen", step * cfg.train.batch_size * accelerator.num_processes))
        start_epoch = resume_epoch(samples_seen, samples_per_epoch, cfg.data.resampled)
        if step == cfg.train.steps:
            accelerator.print(f"{resume_from} is at step {step} = train.steps: nothing to train "
                              f"(raise train.steps to continue the run)")
            return run.root
    loader = loader_from_config(cfg.data, cfg.train.batch_size, transform, tokenizer, seed=cfg.train.seed,
                                rank=accelerator.process_index, world_size=accelerator.num_processes,
                                start_epoch=start_epoch)
    _prepare_run_dir(accelerator, run, cfg, resume is not None, step)
    if resume is not None:
        accelerator.print(f"resumed from {resume[0]} at step {step}; data from epoch {start_epoch} "
                          f"({samples_seen} samples seen)")
    model, optimizer = accelerator.prepare(model, optimizer)
    return _Run(cfg, accelerator, precision, model, accelerator.unwrap_model(model), optimizer, scheduler, transform,
                loader, run, samples_per_epoch, step=step, samples_seen=samples_seen,
                skipped=SkipReport(cfg.data.skip_log_interval_s))


def _step(r: _Run, batch: Dict[str, Any]) -> Optional[Dict[str, torch.Tensor]]:
    """One optimizer update on ``batch``; its losses, or None when the loss was not finite on some
    rank and the batch was skipped everywhere."""
    r.samples_seen += r.global_batch  # consumed, whether or not the step is kept
    r.skipped.update(batch["skipped"])
    device = r.accelerator.device
    inputs = {k: batch[k].to(device, non_blocking=True) for k in MODEL_INPUTS if k in batch}
    for k in IMAGE_INPUTS:
        if k in inputs:
            inputs[k] = normalize_on_device(inputs[k], r.transform.mean, r.transform.std)
    with r.precision.autocast():
        outputs = r.model(**inputs)
        losses = compute_objective(outputs, r.cfg.loss.terms)
    if _any_rank(r.accelerator, not torch.isfinite(losses["total"]).item()):
        r.nonfinite_total += 1
        r.nonfinite_in_a_row += 1
        r.optimizer.zero_grad(set_to_none=True)
        if r.nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW:
            raise NonFiniteLossError(f"loss was not finite for {r.nonfinite_in_a_row} steps in a row at step {r.step}; "
                                     f"the last checkpoint in {r.run.checkpoints} is intact. Lower optim.lr or check the data.")
        return None
    r.nonfinite_in_a_row = 0
    r.precision.backward(losses["total"])
    r.scaler_skipped += not r.precision.step(r.optimizer, r.model.parameters(), r.cfg.optim.grad_clip_norm)
    r.scheduler.step()
    r.optimizer.zero_grad(set_to_none=True)
    r.unwrapped.clamp_logit_scale()
    r.window_samples += r.global_batch
    r.step += 1
    return losses


def _log(r: _Run, losses: Dict[str, torch.Tensor], progress: tqdm) -> None:
    """One metrics.jsonl line: mean losses over ranks, throughput since the last line, counters."""
    elapsed = time.perf_counter() - r.window_start
    mean_losses = {k: r.accelerator.reduce(v.detach().float(), reduction="mean").item() for k, v in losses.items()}
    record: Dict[str, Any] = {
        "step": r.step, "lr": r.scheduler.get_last_lr()[0],
        "logit_scale": r.unwrapped.logit_head.scale().detach().item(),
        "samples_per_s": r.window_samples / max(elapsed, 1e-9),
        **{f"loss/{k}": v for k, v in mean_losses.items()},
        "skipped_samples": _sum_over_ranks(r.skipped.totals), "nonfinite_steps": r.nonfinite_total,
        **({"scaler_skipped_steps": r.scaler_skipped} if r.precision.scaler is not None else {}),
    }
    if r.samples_per_epoch:
        record["epoch"] = r.step * r.global_batch / r.samples_per_epoch
    progress.set_postfix(loss=f"{mean_losses['total']:.3f}", samples_s=f"{record['samples_per_s']:.0f}")
    if r.accelerator.is_main_process:
        r.run.log_metrics(record)
    r.window_start, r.window_samples = time.perf_counter(), 0


def _loop(r: _Run) -> None:
    """Steps until ``train.steps``: log every ``log_every``, checkpoint every ``checkpoint_every``."""
    cfg = r.cfg
    progress = tqdm(total=cfg.train.steps, initial=r.step, disable=not r.accelerator.is_main_process,
                    desc="train", unit="step", dynamic_ncols=True)
    batches = iter(r.loader)
    r.window_start, r.window_samples = time.perf_counter(), 0
    r.model.train()
    while r.step < cfg.train.steps:  # r.step: optimizer updates done; a skipped batch does not count
        losses = _step(r, next(batches))
        if losses is None:
            continue
        progress.update(1)
        if r.step % cfg.train.log_every == 0 or r.step == cfg.train.steps:
            _log(r, losses, progress)
        if r.step % cfg.train.checkpoint_every == 0 and r.step < cfg.train.steps:
            _save(r, r.run.checkpoints / f"step-{r.step:08d}.pt")
            if r.accelerator.is_main_process:
                prune_step_checkpoints(r.run.checkpoints, cfg.train.keep_checkpoints)
    progress.close()


def _finish(r: _Run, evaluate: Optional[EvaluateAtEnd]) -> None:
    """The final checkpoint, the run summary, then the end-of-training evaluation on every rank."""
    all_skipped = _sum_over_ranks(r.skipped.totals)
    _save(r, r.run.checkpoints / FINAL_NAME)
    if r.accelerator.is_main_process:
        r.run.save_json("train_summary.json", {
            "steps": r.step, "global_batch": r.global_batch, "world_size": r.accelerator.num_processes,
            "precision": r.cfg.train.precision, "skipped_samples": all_skipped,
            "nonfinite_steps": r.nonfinite_total, "scaler_skipped_steps": r.scaler_skipped})
    if evaluate is not None and r.cfg.eval.at_end and r.cfg.eval.builtin_root:
        was_training = r.unwrapped.training
        r.unwrapped.eval()
        evaluate(r.unwrapped, r.cfg, r.run.root)
        r.unwrapped.train(was_training)
    r.accelerator.wait_for_everyone()


def train(cfg: Config, recipe: Optional[str] = None, evaluate: EvaluateAtEnd | str | None = INSTALLED) -> Path:
    """Train with ``cfg``; returns the run directory. ``recipe`` (the config file's stem) names a
    run that ``train.run_name`` leaves unnamed. ``evaluate(model, cfg, run_dir)`` runs on every
    rank after the final checkpoint when ``eval.at_end``; the default is the evaluation an
    installed application provides (none: no evaluation), None skips it."""
    started = _start(cfg, recipe)
    if isinstance(started, Path):
        return started
    r = started
    r.accelerator.print(f"run dir {r.run.root} | {r.accelerator.num_processes} process(es) on {r.accelerator.device} | "
                        f"{count_parameters(r.unwrapped)['total'] / 1e6:.1f}M parameters | global batch {r.global_batch}"
                        + (f" | {r.samples_per_epoch} samples/epoch" if r.samples_per_epoch else ""))
    _loop(r)
    _finish(r, resolve_evaluation(evaluate))
    r.accelerator.end_training()
    return r.run.root
