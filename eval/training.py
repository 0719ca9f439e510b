"""The trainer's evaluations: the built-in suite on the model the trainer holds in memory.

:func:`evaluate_at_end` is what the trainer calls once training is done, on every rank: under
several ranks (a torch.distributed group the trainer started) each rank encodes its part of every
set through the encoder's data-parallel path and every rank gets the results; rank 0 prints the
table and writes ``eval_results.json`` in the run folder. Embeddings go through the eval cache
(``cfg.eval.cache``), keyed by the model's weights, so only an identical model hits it.

:func:`evaluate_periodic` is what it calls every ``eval.every`` steps: the suite's tasks named by
``eval.every_tasks`` the same way, without the cache (the weights change every step), returned as
flat numbers ``eval/<entry>/<metric>`` for the trainer to log; it writes no file.
"""

from __future__ import annotations

import logging
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch
from tqdm import tqdm

from eval.encoding.cache import EmbeddingCache, default_cache_dir
from eval.encoding.embed import model_device
from eval.encoding.encoder import Encoder
from eval.encoding.parallel import process_group_runtime
from eval.run import RunOptions
from eval.suite import builtin_selection, flat_metrics, format_table, run_builtin
from vlp.errors import ConfigError
from vlp.utils.atomic import write_json_atomic

log = logging.getLogger(__name__)

RESULTS_FILE = "eval_results.json"
PERIODIC_PREFIX = "eval/"


def evaluate_at_end(model: Any, cfg: Any, run_root: Path) -> Optional[dict[str, dict[str, Any]]]:
    """The built-in suite (``cfg.eval.builtin_root``) on ``model``, a trained in-memory vlp
    DualEncoder, encoded in batches of ``cfg.eval.batch_size``; {entry: result dict} on every
    rank, or None when ``cfg.eval.at_end`` is off or ``builtin_root`` unset or missing (a
    warning for a missing folder).

    Rank 0 writes ``run_root/eval_results.json`` (indented, key-sorted JSON) and prints the
    results table and ``results: PATH``. The model is put in eval mode for the evaluation and
    back in its training mode after.
    """
    from vlp.interop.loaded import wrap_model

    device = model_device(model)
    runtime = process_group_runtime(device)
    if not cfg.eval.at_end or not cfg.eval.builtin_root:
        return None
    root = Path(cfg.eval.builtin_root)
    if not runtime.from_main(root.is_dir()):  # rank 0 decides: node-local folders must not split the ranks
        if runtime.is_main:
            log.warning("eval.builtin_root %s not found; skipping the final evaluation", root)
        return None
    cache = EmbeddingCache(default_cache_dir() if cfg.eval.cache else None)
    loaded = wrap_model(model, cfg, name=str(run_root))
    encoder = Encoder.for_loaded(loaded, cfg.eval.batch_size, device, cache=cache, runtime=runtime)
    was_training = model.training
    model.eval()
    try:
        results = run_builtin(encoder, root, None, RunOptions(grid_queries=0))
    finally:
        model.train(was_training)
    if runtime.is_main:
        path = Path(run_root) / RESULTS_FILE
        write_json_atomic(path, results)
        print(format_table(results))
        print(f"results: {path}")
    return results


@contextmanager
def _random_state_kept(device: torch.device) -> Iterator[None]:
    """Leave every generator the trainer draws from (torch CPU and CUDA, numpy, random) as it was:
    an evaluation in between never changes the training run's data order or augmentation."""
    devices = [device] if device.type == "cuda" else []
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def check_every_tasks(cfg: Any) -> None:
    """Fail at start-up (ConfigError naming the choices) when ``eval.every_tasks`` names a task the
    built-in suite does not have; nothing to check while ``eval.every`` is 0. It is
    ``evaluate_periodic.check``, which the trainer calls before any work
    (vlp.train.evaluation.check_periodic)."""
    if not cfg.eval.every:
        return
    try:
        builtin_selection(list(cfg.eval.every_tasks))
    except ValueError as err:
        raise ConfigError(f"eval.every_tasks: {err}") from None


def evaluate_periodic(model: Any, cfg: Any, run_root: Path, step: int) -> Dict[str, float]:
    """The built-in suite's tasks named in ``cfg.eval.every_tasks`` on ``model`` (a vlp
    DualEncoder in memory) at training step ``step``: {"eval/<entry>/<metric>": number} (with
    "eval/<entry>/skipped"), the same on every rank; {} when ``eval.builtin_root`` is unset or
    missing (a warning, from rank 0).

    Every rank encodes its part of each set (data parallel, as :func:`evaluate_at_end`); no
    embedding cache, no progress bars, no files (the trainer logs the dict with the step). The
    model is in eval mode meanwhile and back in its training mode after; the random generators
    are left as they were. Rank 0 prints one line of the metrics.
    """
    from vlp.interop.loaded import wrap_model

    device = model_device(model)
    runtime = process_group_runtime(device)
    if not cfg.eval.builtin_root:
        return {}
    root = Path(cfg.eval.builtin_root)
    if not runtime.from_main(root.is_dir()):
        if runtime.is_main:
            log.warning("eval.builtin_root %s not found; skipping the evaluation at step %d", root, step)
        return {}
    loaded = wrap_model(model, cfg, name=str(run_root))
    encoder = Encoder.for_loaded(loaded, cfg.eval.batch_size, device, progress=False, runtime=runtime)
    was_training = model.training
    model.eval()
    try:
        with _random_state_kept(torch.device(device)):
            results = run_builtin(encoder, root, None, RunOptions(grid_queries=0), only=list(cfg.eval.every_tasks))
    finally:
        model.train(was_training)
    flat = {f"{PERIODIC_PREFIX}{key}": value for key, value in flat_metrics(results).items()}
    if runtime.is_main:
        shown = "  ".join(f"{k[len(PERIODIC_PREFIX):]} {v:.4f}" for k, v in flat.items() if not k.endswith("/skipped"))
        tqdm.write(f"eval at step {step}: {shown}")  # beside the trainer's progress bar
    return flat


evaluate_periodic.check = check_every_tasks  # type: ignore[attr-defined]
