"""The training loop: one Accelerate loop over the endless shard stream.

Before any work: the run directory is checked (a resumed run must train the same thing on the
same number of processes, and not be past ``train.steps`` already; see vlp/train/resume.py), and
only then is its config written. Per step (:func:`_step`): move the batch to the device (images as
uint8) and normalise its images there, forward the model in the requested precision, sum the
configured objectives over its outputs dict, backward, clip, AdamW step, schedule step, clamp the
temperature, then the heads' hooks (``step_metrics`` at log steps, logged as ``head/<name>/<key>``;
``after_step`` every step). Every ``log_every`` steps a JSON line; every ``checkpoint_every`` steps an atomic
checkpoint; at the end a final checkpoint and the end-of-training evaluation, which the caller
hands in (``evaluate``; by default the one an installed application provides, see
vlp/train/evaluation.py). A step whose loss is not finite on any rank is skipped on all ranks and
counted; too many in a row stop the run with the last good checkpoint intact.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from tqdm import tqdm

from vlp.config import Config
from vlp.data.pipeline import epoch_samples, loader_from_config, train_sources
from vlp.data.skips import SkipReport
from vlp.data.transforms import normalize_on_device, train_transform
from vlp.losses.registry import compute_objective
from vlp.models.factory import build_model, count_parameters, model_tokenizer
from vlp.models.heads import check_heads_with_terms
from vlp.checkpoints import FINAL_NAME, prune_step_checkpoints
from vlp.train.evaluation import (INSTALLED, EvaluationChoice, PeriodicChoice, check_periodic, resolve_evaluation,
                                  resolve_periodic)
from vlp.train.oom import explain_out_of_memory
from vlp.train.plots import plot_training
from vlp.train.trackers import open_trackers
from vlp.train.optim import build_optimizer, build_scheduler
from vlp.train.accelerator import make_accelerator, prepare_model_and_optimizer
from vlp.train.checkpointing import (counters_of, rank_entry, restore_head_states, restore_rng_of_rank,
                                     save_training_state)
from vlp.train.ema import WeightAverage
from vlp.train.host_memory import retain_freed_memory
from vlp.train.precision import Precision
from vlp.train.resume import load_states, previous_run, resume_epoch
from vlp.train.run_dir import RunDir, claim_default_run_name
from vlp.train.state import TrainState
from vlp.train.step_log import any_rank, log_due, log_step, run_head_hooks, sum_over_ranks

MAX_NONFINITE_IN_A_ROW = 20
MODEL_INPUTS = ("image", "text", "neg_text", "image_aug", "text_aug")  # batch keys the model takes
IMAGE_INPUTS = ("image", "image_aug")  # uint8 pixels from the loader, normalised on the device


class NonFiniteLossError(RuntimeError):
    pass


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


def _prepare_run_dir(accelerator: Accelerator, run: RunDir, cfg: Config, resumed: bool, start_step: int) -> None:
    """Rank 0 moves aside what this run does not continue and writes the config; every rank waits."""
    accelerator.wait_for_everyone()  # every rank has read the old run before rank 0 changes its directory
    if accelerator.is_main_process:
        if resumed and run.rewind_metrics(start_step):
            print(f"metrics.jsonl lines after step {start_step} (trained again now) moved to metrics.superseded.jsonl")
        aside = run.set_aside() if not resumed else None
        if aside is not None:
            print(f"{run.root} held a run that is not resumed here (train.resume={cfg.train.resume} "
                  f"or no checkpoint yet); its files were moved to {aside}")
        run.create()
        run.save_config(cfg)
    accelerator.wait_for_everyone()


def _start(cfg: Config, recipe: Optional[str], periodic: PeriodicChoice) -> TrainState | Path:
    """Build and place everything, resuming from the run directory when it allows; the run
    directory itself when there is nothing left to train."""
    # what only training needs of the heads (e.g. no parameter that nothing trains: DDP refuses
    # one); checked here, not when a config is read, so a saved config still loads for evaluation
    check_heads_with_terms(cfg.model.heads, cfg.loss.terms)
    periodic_eval = resolve_periodic(periodic) if cfg.eval.every else None
    check_periodic(periodic_eval, cfg)  # a bad eval.every_tasks stops now, not at step eval.every
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.retain_freed_memory:
        retain_freed_memory()  # before the model and the loader workers exist
    accelerator = make_accelerator(cfg)
    precision = Precision(accelerator, cfg.train.precision)
    _warn_about_setup(cfg, accelerator)
    set_seed(cfg.train.seed)
    run = RunDir.at(cfg, _run_name(accelerator, cfg, recipe))
    resume = previous_run(run, cfg, accelerator.num_processes)  # every check passes before anything is written
    model = precision.place_model(build_model(cfg.model, resuming=resume is not None))  # a resume reads no init file
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    tokenizer = model_tokenizer(cfg.model, model)
    transform = train_transform(model.image_size, cfg.data.resize_scale, cfg.data.color_jitter)
    samples_per_epoch = cfg.data.num_samples or epoch_samples(train_sources(cfg.data))
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.train.steps, cfg.optim)
    ema = WeightAverage(model, cfg.train.ema_decay) if cfg.train.ema_decay else None

    step, samples_seen, start_epoch, position, saved = 0, 0, 0, None, None
    if resume is not None:
        resume_from, saved = resume
        load_states(resume_from, saved, model=model, optimizer=optimizer, scheduler=scheduler, grad_scaler=precision,
                    ema=ema)
        step = int(saved["step"])
        samples_seen = int(saved.get("samples_seen", step * cfg.train.batch_size * accelerator.num_processes))
        position = rank_entry(saved, "data_position", accelerator.process_index)
        start_epoch = 0 if position is not None else resume_epoch(samples_seen, samples_per_epoch, cfg.data.resampled)
        if step == cfg.train.steps:
            accelerator.print(f"{resume_from} is at step {step} = train.steps: nothing to train "
                              f"(raise train.steps to continue the run)")
            return run.root
    loader = loader_from_config(cfg.data, cfg.train.batch_size, transform, tokenizer, seed=cfg.train.seed,
                                rank=accelerator.process_index, world_size=accelerator.num_processes,
                                start_epoch=start_epoch, **({"position": position} if position is not None else {}))
    _prepare_run_dir(accelerator, run, cfg, resume is not None, step)
    if resume is not None:
        epoch = f"epoch {samples_seen // samples_per_epoch}, " if samples_per_epoch and not cfg.data.resampled else ""
        where = f"at the saved loader position ({epoch}mid-epoch)" if position is not None else f"from epoch {start_epoch}"
        accelerator.print(f"resumed from {resume[0]} at step {step}; data {where} ({samples_seen} samples seen)")
    model, optimizer = prepare_model_and_optimizer(accelerator, model, optimizer)  # FSDP2: see vlp/train/accelerator.py
    unwrapped = accelerator.unwrap_model(model)
    if cfg.train.compile:
        model = torch.compile(model)
    state = TrainState(cfg, accelerator, precision, model, unwrapped, optimizer, scheduler,
                       transform, loader, run, samples_per_epoch, step=step, samples_seen=samples_seen,
                       skipped=SkipReport(cfg.data.skip_log_interval_s), ema=ema, resumed_from=saved,
                       position=getattr(loader, "position", None), periodic_eval=periodic_eval, trackers=open_trackers(accelerator, cfg, run.root, start_step=step))
    if saved is not None:
        state.nonfinite_total, state.scaler_skipped = counters_of(saved).values()
    return state


def _model_inputs(state: TrainState, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The model's inputs of one loader batch on the device, images normalised there (in the weights'
    dtype under pure bf16, channels-last when asked)."""
    device = state.accelerator.device
    inputs = {k: batch[k].to(device, non_blocking=True) for k in MODEL_INPUTS if k in batch}
    for k in IMAGE_INPUTS:
        if k in inputs:
            image = normalize_on_device(inputs[k], state.transform.mean, state.transform.std)
            image = image.to(state.precision.input_dtype)
            inputs[k] = image.contiguous(memory_format=torch.channels_last) if state.cfg.train.channels_last else image
    return inputs


def _forward_backward(state: TrainState, micro: List[Dict[str, torch.Tensor]]) -> tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """(losses, outputs) of one step's batch, its gradients accumulated: one forward and backward,
    or gradient caching over ``train.accum_steps`` micro-batches (vlp/train/grad_cache.py)."""
    objective = functools.partial(compute_objective, terms=state.cfg.loss.terms)
    if len(micro) == 1:
        with state.precision.autocast():
            outputs = state.model(**micro[0])
            losses = objective(outputs)
        if _finite_everywhere(state, losses["total"]):
            state.precision.backward(losses["total"])
        return losses, outputs
    from vlp.train.grad_cache import cached_backward

    return cached_backward(state.model, micro, objective, autocast=state.precision.autocast,
                           scale_loss=state.precision.scale_loss, no_sync=lambda: state.accelerator.no_sync(state.model),
                           keep_going=lambda losses: _finite_everywhere(state, losses["total"]))


def _finite_everywhere(state: TrainState, total: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank; counts and skips the step when not (everywhere alike)."""
    if not any_rank(state.accelerator, not torch.isfinite(total).item()):
        state.nonfinite_in_a_row = 0
        return True
    state.nonfinite_total += 1
    state.nonfinite_in_a_row += 1
    if state.nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW:
        raise NonFiniteLossError(f"loss was not finite for {state.nonfinite_in_a_row} steps in a row at step "
                                 f"{state.step}; the last checkpoint in {state.run_dir.checkpoints} is intact. "
                                 "Lower optim.lr or check the data.")
    return False


def _step(state: TrainState, batches: List[Dict[str, Any]]) -> Optional[Dict[str, torch.Tensor]]:
    """One optimizer update on ``batches`` (``train.accum_steps`` loader batches); its losses, or None
    when the loss was not finite on some rank and the step was skipped everywhere."""
    state.samples_seen += state.global_batch  # consumed, whether or not the step is kept
    for batch in batches:
        state.skipped.update(batch["skipped"])
        if state.position is not None:
            state.position.observe(batch)
    losses, outputs = _forward_backward(state, [_model_inputs(state, b) for b in batches])
    if state.nonfinite_in_a_row:  # this step's loss was not finite somewhere: no update
        state.optimizer.zero_grad(set_to_none=True)
        return None
    stepped = state.precision.step(state.optimizer, state.model.parameters(), state.cfg.optim.grad_clip_norm)
    state.scaler_skipped += not stepped
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.unwrapped.clamp_logit_scale()
    if state.ema is not None:
        state.ema.update(state.unwrapped)
    state.window_samples += state.global_batch
    state.step += 1
    run_head_hooks(state, outputs)
    return losses


def _checkpoint_due(state: TrainState) -> bool:
    """Every ``checkpoint_every`` steps, or when ``checkpoint_minutes`` have passed (rank 0's clock decides for all)."""
    cfg = state.cfg.train
    if state.step >= cfg.steps:
        return False  # the final checkpoint follows
    if state.step % cfg.checkpoint_every == 0:
        return True
    if cfg.checkpoint_minutes is None:
        return False
    late = state.accelerator.is_main_process and time.monotonic() - state.last_checkpoint_time >= 60 * cfg.checkpoint_minutes
    return any_rank(state.accelerator, late)


def _loop(state: TrainState) -> None:
    """Steps until ``train.steps``: log every ``log_every``, checkpoint every ``checkpoint_every``
    (and ``checkpoint_minutes``)."""
    cfg = state.cfg
    progress = tqdm(total=cfg.train.steps, initial=state.step, disable=not state.accelerator.is_main_process,
                    desc="train", unit="step", dynamic_ncols=True)
    batches = iter(state.loader)
    if state.resumed_from is not None:  # after the loader's workers drew their seeds: the generators continue as saved
        restore_rng_of_rank(state.resumed_from, state.accelerator.process_index)
        restore_head_states(state.resumed_from, state.unwrapped, state.accelerator.process_index)
        state.resumed_from = None
    state.window_start, state.window_samples = time.perf_counter(), 0
    state.model.train()
    while state.step < cfg.train.steps:  # state.step: optimizer updates done; a skipped batch does not count
        micro = [next(batches) for _ in range(cfg.train.accum_steps)]
        with explain_out_of_memory(cfg, world_size=state.accelerator.num_processes, step=state.step + 1):
            losses = _step(state, micro)
        if losses is None:
            continue
        progress.update(1)
        if log_due(state):
            log_step(state, losses, progress)
        if _periodic_eval_due(state):
            _evaluate_now(state)
        if _checkpoint_due(state):
            save_training_state(state, state.run_dir.checkpoints / f"step-{state.step:08d}.pt")
            state.last_checkpoint_time = time.monotonic()
            if state.accelerator.is_main_process:
                prune_step_checkpoints(state.run_dir.checkpoints, cfg.train.keep_checkpoints)
    progress.close()


def _model_of_record(state: TrainState) -> Any:
    """What evaluation and export see: the weight average when the run keeps one, else the weights."""
    return state.ema.module if state.ema is not None else state.unwrapped


def _periodic_eval_due(state: TrainState) -> bool:
    every = state.cfg.eval.every
    last_and_at_end = state.cfg.eval.at_end and state.step == state.cfg.train.steps  # the final evaluation follows
    return state.periodic_eval is not None and state.step % every == 0 and not last_and_at_end


def _evaluate_now(state: TrainState) -> None:
    """The periodic evaluation on every rank; its metrics logged (rank 0) at this step."""
    metrics = state.periodic_eval(_model_of_record(state), state.cfg, state.run_dir.root, state.step)
    if metrics and state.accelerator.is_main_process:
        record = {"step": state.step, "samples_seen": state.samples_seen, **metrics}
        state.run_dir.log_metrics(record)
        state.trackers.log(record, state.step)


def _finish(state: TrainState, evaluate: EvaluationChoice) -> None:
    """The final checkpoint, the run summary, then the end-of-training evaluation on every rank."""
    all_skipped = sum_over_ranks(state.skipped.totals)
    save_training_state(state, state.run_dir.checkpoints / FINAL_NAME)
    if state.accelerator.is_main_process:
        state.run_dir.save_json("train_summary.json", {
            "steps": state.step, "global_batch": state.global_batch, "world_size": state.accelerator.num_processes,
            "precision": state.cfg.train.precision, "skipped_samples": all_skipped,
            "nonfinite_steps": state.nonfinite_total, "scaler_skipped_steps": state.scaler_skipped})
    evaluate = resolve_evaluation(evaluate) if state.cfg.eval.at_end else None
    results = evaluate(_model_of_record(state), state.cfg, state.run_dir.root) if evaluate is not None else None
    if results and state.accelerator.is_main_process:
        state.trackers.log({f"eval/{entry}/{k}": v for entry, result in results.items()
                            for k, v in (result.get("metrics") or {}).items()}, state.step)
    state.accelerator.wait_for_everyone()


def train(cfg: Config, recipe: Optional[str] = None, evaluate: EvaluationChoice = INSTALLED,
          periodic: PeriodicChoice = INSTALLED) -> Path:
    """Train with ``cfg``; returns the run directory. ``recipe`` (the config file's stem) names a
    run that ``train.run_name`` leaves unnamed. ``evaluate(model, cfg, run_dir)`` runs on every
    rank after the final checkpoint when ``eval.at_end``, and ``periodic(model, cfg, run_dir, step)``
    every ``eval.every`` steps; the defaults are the evaluations an installed application provides
    (none: no evaluation), None skips them."""
    started = _start(cfg, recipe, periodic)
    if isinstance(started, Path):
        return started
    state, accelerator = started, started.accelerator
    per_epoch = f" | {state.samples_per_epoch} samples/epoch" if state.samples_per_epoch else ""
    accelerator.print(f"run dir {state.run_dir.root} | {accelerator.num_processes} process(es) on "
                      f"{accelerator.device} | {count_parameters(state.unwrapped)['total'] / 1e6:.1f}M parameters | "
                      f"global batch {state.global_batch}{per_epoch}")
    try:
        _loop(state)
        _finish(state, evaluate)
    finally:
        state.trackers.close()
    if cfg.train.plot and accelerator.is_main_process:
        curves = plot_training(state.run_dir.root)
        if curves is not None:
            print(f"curves: {curves}")
    state.accelerator.end_training()
    return state.run_dir.root
