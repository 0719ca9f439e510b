"""The end-of-training evaluation: the built-in suite on the model the trainer holds in memory.

:func:`evaluate_at_end` is what the trainer calls once training is done, on every rank: under
several ranks (a torch.distributed group the trainer started) each rank encodes its part of every
set through the encoder's data-parallel path and every rank gets the results; rank 0 prints the
table and writes ``eval_results.json`` in the run folder. Embeddings go through the eval cache
(``cfg.eval.cache``), keyed by the model's weights, so only an identical model hits it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from eval.encoding.cache import EmbeddingCache, default_cache_dir
from eval.encoding.embed import model_device
from eval.encoding.encoder import Encoder
from eval.encoding.parallel import process_group_runtime
from eval.run import RunOptions
from eval.suite import format_table, run_builtin
from vlp.utils.atomic import write_json_atomic

log = logging.getLogger(__name__)

RESULTS_FILE = "eval_results.json"


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
