"""What an export is made from: one checkpoint of a run (or a checkpoint file, or a safetensors
export of ours), the weights chosen in it, and the facts about the run the model card reports."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from vlp.checkpoints import load_checkpoint, select_checkpoint
from vlp.config import Config, config_from_yaml
from vlp.interop.vlp_files import model_from_checkpoint, model_from_state, vlp_safetensors_config
from vlp.models.dual_encoder import DualEncoder

EVAL_RESULTS = "eval_results.json"
TRAIN_SUMMARY = "train_summary.json"


@dataclass
class ExportSource:
    """A model ready to export and where it came from."""

    model: DualEncoder
    cfg: Config
    checkpoint: Path
    weights: str
    """'ema' (the weight average) or 'raw' (the trained weights)."""
    step: Optional[int] = None
    samples_seen: Optional[int] = None
    run_dir: Optional[Path] = None
    summary: Dict[str, Any] = field(default_factory=dict)
    """The run's train_summary.json (global batch, world size, precision), when found."""
    eval_results: Dict[str, Any] = field(default_factory=dict)
    """The run's eval_results.json ({task: {dataset, metrics}}), when found."""


def _run_dir_of(checkpoint: Path) -> Optional[Path]:
    """The run directory a checkpoint file sits in (``RUN/checkpoints/NAME.pt``), if it looks like one."""
    folder = checkpoint.parent
    run = folder.parent if folder.name == "checkpoints" else folder
    return run if (run / "config.yaml").is_file() or (run / TRAIN_SUMMARY).is_file() else None


def _json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def load_export_source(path: str | Path, checkpoint: str = "auto", weights: str = "auto") -> ExportSource:
    """The model to export from ``path``: a run directory (the checkpoint ``checkpoint`` names:
    auto, final, newest or a file name; ``vlp.checkpoints.select_checkpoint``), a checkpoint file,
    or a vlp safetensors export. ``weights``: auto (the weight average when the run kept one), ema
    (required) or raw. The model is on the CPU in eval mode."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors.torch import load_file

        from vlp.interop.detect import safetensors_metadata

        metadata = safetensors_metadata(path)
        if "vlp_config" not in metadata:
            raise ValueError(f"{path} is not a vlp safetensors export (no vlp_config in its metadata)")
        if weights == "ema" or checkpoint not in ("auto", "final", "newest"):
            raise ValueError(f"{path} is an export that holds one set of weights: --weights ema and a named "
                             "--checkpoint apply to run directories and checkpoint files")
        cfg = config_from_yaml(vlp_safetensors_config(path, metadata))
        return ExportSource(model_from_state(cfg, load_file(str(path))), cfg, path, weights="as exported")
    ckpt_path = select_checkpoint(path, checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    model, cfg, averaged = model_from_checkpoint(ckpt, ckpt_path, weights)
    run = _run_dir_of(ckpt_path)
    step = ckpt.get("step")
    seen = ckpt.get("samples_seen")
    return ExportSource(model, cfg, ckpt_path, "ema" if averaged else "raw",
                        step=int(step) if step is not None else None,
                        samples_seen=int(seen) if seen is not None else None, run_dir=run,
                        summary=_json(run / TRAIN_SUMMARY) if run else {},
                        eval_results=_json(run / EVAL_RESULTS) if run else {})
