"""The training loop: one Accelerate loop over the endless shard stream.

Before any work: the run directory is checked (a resumed run must train the same thing on the
same number of processes, and not be past ``train.steps`` already; see vlp/train/resume.py), and
only then is its config written. Per step: move the batch to the device (images as uint8) and
normalise its images there, forward both towers in the requested precision, sum the configured
objectives, backward, clip, AdamW step, schedule step, clamp the temperature. Every ``log_every`` steps a JSON line; every ``checkpoint_every`` steps
an atomic checkpoint; at the end a final checkpoint and the built-in evaluation. A step whose loss
is not finite on any rank is skipped on all ranks and counted; too many in a row stop the run with
the last good checkpoint intact.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
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
from vlp.train.checkpoint import FINAL_NAME, prune_step_checkpoints, save_atomic
from vlp.train.optim import build_optimizer, build_scheduler
from vlp.train.precision import Precision, accelerate_precision
from vlp.train.resume import load_states, previous_run, resume_epoch
from vlp.train.run_dir import RunDir, claim_default_run_name

log = logging.getLogger(__name__)
MAX_NONFINITE_IN_A_ROW = 20
MODEL_INPUTS = ("image", "text", "neg_text", "image_aug", "text_aug")  # batch keys the model takes
IMAGE_INPUTS = ("image", "image_aug")  # uint8 pixels from the loader, normalised on the device


class NonFiniteLossError(RuntimeError):
    pass


def _save(accelerator: Accelerator, path: Path, model, optimizer, scheduler, precision: Precision, step: int,
          cfg: Config, samples_seen: int) -> None:
    if accelerator.is_main_process:
        state = {"model": accelerator.unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "grad_scaler": precision.state_dict(), "step": step,
                 "config": config_to_yaml(cfg), "samples_seen": samples_seen,
                 "world_size": accelerator.num_processes}
        save_atomic(state, path)
    accelerator.wait_for_everyone()


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


def train(cfg: Config, recipe: Optional[str] = None) -> Path:
    """Train with ``cfg``; returns the run directory. ``recipe`` (the config file's stem) names a
    run that ``train.run_name`` leaves unnamed."""
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

    global_batch = cfg.train.batch_size * accelerator.num_processes
    run = RunDir.at(cfg, _run_name(accelerator, cfg, recipe))
    resume = previous_run(run, cfg, accelerator.num_processes)  # every check passes before anything is written
    start_step, samples_seen, start_epoch = 0, 0, 0
    if resume is not None:
        resume_from, state = resume
        load_states(resume_from, state, model=model, optimizer=optimizer, scheduler=scheduler, grad_scaler=precision)
        start_step = int(state["step"])
        samples_seen = int(state.get("samples_seen", start_step * global_batch))
        start_epoch = resume_epoch(samples_seen, samples_per_epoch, cfg.data.resampled)
        if start_step == cfg.train.steps:
            accelerator.print(f"{resume_from} is at step {start_step} = train.steps: nothing to train "
                              f"(raise train.steps to continue the run)")
            return run.root
    loader = loader_from_config(cfg.data, cfg.train.batch_size, transform, tokenizer, seed=cfg.train.seed,
                                rank=accelerator.process_index, world_size=accelerator.num_processes,
                                start_epoch=start_epoch)
    accelerator.wait_for_everyone()  # every rank has read the old run before rank 0 changes its directory
    if accelerator.is_main_process:
        if resume is not None and run.rewind_metrics(start_step):
            print(f"metrics.jsonl lines after step {start_step} (trained again now) moved to metrics.superseded.jsonl")
        aside = run.set_aside() if resume is None else None
        if aside is not None:
            print(f"{run.root} held a run that is not resumed here (train.resume={str(cfg.train.resume).lower()} "
                  f"or no checkpoint yet); its files were moved to {aside}")
        run.create()
        run.save_config(cfg)
    accelerator.wait_for_everyone()
    if resume is not None:
        accelerator.print(f"resumed from {resume[0]} at step {start_step}; data from epoch {start_epoch} "
                          f"({samples_seen} samples seen)")
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    accelerator.print(f"run dir {run.root} | {accelerator.num_processes} process(es) on {accelerator.device} | "
                      f"{count_parameters(unwrapped)['total'] / 1e6:.1f}M parameters | global batch {global_batch}"
                      + (f" | {samples_per_epoch} samples/epoch" if samples_per_epoch else ""))

    skipped = SkipReport(cfg.data.skip_log_interval_s)  # running totals, logged periodically
    nonfinite_total, nonfinite_in_a_row, scaler_skipped = 0, 0, 0
    progress = tqdm(total=cfg.train.steps, initial=start_step, disable=not accelerator.is_main_process,
                    desc="train", unit="step", dynamic_ncols=True)
    batches = iter(loader)
    window_start, window_samples = time.perf_counter(), 0
    model.train()
    step = start_step  # optimizer updates done; a skipped (non-finite) batch does not count
    while step < cfg.train.steps:
        batch = next(batches)
        samples_seen += global_batch  # consumed, whether or not the step is kept
        skipped.update(batch["skipped"])
        inputs = {k: batch[k].to(accelerator.device, non_blocking=True) for k in MODEL_INPUTS if k in batch}
        for k in IMAGE_INPUTS:
            if k in inputs:
                inputs[k] = normalize_on_device(inputs[k], transform.mean, transform.std)
        with precision.autocast():
            outputs = model(**inputs)
            losses = compute_objective(outputs, cfg.loss.terms)
        if _any_rank(accelerator, not torch.isfinite(losses["total"]).item()):
            nonfinite_total += 1
            nonfinite_in_a_row += 1
            optimizer.zero_grad(set_to_none=True)
            if nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW:
                raise NonFiniteLossError(f"loss was not finite for {nonfinite_in_a_row} steps in a row at step {step}; "
                                         f"the last checkpoint in {run.checkpoints} is intact. Lower optim.lr or check the data.")
            continue
        nonfinite_in_a_row = 0
        precision.backward(losses["total"])
        scaler_skipped += not precision.step(optimizer, model.parameters(), cfg.optim.grad_clip_norm)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        unwrapped.clamp_logit_scale()
        window_samples += global_batch
        progress.update(1)
        step += 1
        done = step
        if done % cfg.train.log_every == 0 or done == cfg.train.steps:
            elapsed = time.perf_counter() - window_start
            mean_losses = {k: accelerator.reduce(v.detach().float(), reduction="mean").item() for k, v in losses.items()}
            record: Dict[str, Any] = {
                "step": done, "lr": scheduler.get_last_lr()[0],
                "logit_scale": unwrapped.clip.logit_scale.detach().exp().item(),
                "samples_per_s": window_samples / max(elapsed, 1e-9),
                **{f"loss/{k}": v for k, v in mean_losses.items()},
                "skipped_samples": _sum_over_ranks(skipped.totals), "nonfinite_steps": nonfinite_total,
                **({"scaler_skipped_steps": scaler_skipped} if precision.scaler is not None else {}),
            }
            if samples_per_epoch:
                record["epoch"] = done * global_batch / samples_per_epoch
            progress.set_postfix(loss=f"{mean_losses['total']:.3f}", samples_s=f"{record['samples_per_s']:.0f}")
            if accelerator.is_main_process:
                run.log_metrics(record)
            window_start, window_samples = time.perf_counter(), 0
        if done % cfg.train.checkpoint_every == 0 and done < cfg.train.steps:
            _save(accelerator, run.checkpoints / f"step-{done:08d}.pt", model, optimizer, scheduler, precision, done,
                  cfg, samples_seen)
            if accelerator.is_main_process:
                prune_step_checkpoints(run.checkpoints, cfg.train.keep_checkpoints)
    progress.close()

    all_skipped = _sum_over_ranks(skipped.totals)
    _save(accelerator, run.checkpoints / FINAL_NAME, model, optimizer, scheduler, precision, step, cfg, samples_seen)
    if accelerator.is_main_process:
        run.save_json("train_summary.json", {"steps": step, "global_batch": global_batch,
                                             "world_size": accelerator.num_processes, "precision": cfg.train.precision,
                                             "skipped_samples": all_skipped, "nonfinite_steps": nonfinite_total,
                                             "scaler_skipped_steps": scaler_skipped})
        if cfg.eval.at_end and cfg.eval.builtin_root:
            final_evaluation(unwrapped, cfg, run)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run.root


def final_evaluation(model, cfg: Config, run: RunDir) -> Optional[Dict[str, Any]]:
    """Built-in eval sets on the trained model: printed as a table, saved as eval_results.json."""
    from eval.suite import evaluate_builtin, format_table
    from vlp.models.loading import wrap_model

    root = Path(cfg.eval.builtin_root)
    if not root.is_dir():
        log.warning("eval.builtin_root %s not found; skipping the final evaluation", root)
        return None
    was_training = model.training
    model.eval()
    results = evaluate_builtin(wrap_model(model, cfg, name=str(run.root)), root, batch_size=cfg.eval.batch_size)
    model.train(was_training)
    path = run.save_json("eval_results.json", results)
    print(format_table(results))
    print(f"results: {path}")
    return results
