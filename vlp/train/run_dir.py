"""The run directory: resolved config, metrics as JSON lines, checkpoints, final results.

Its name is ``train.run_name``, or ``<recipe>-<YYYYmmdd-HHMMSS>`` (as open_clip names runs by
time) with a suffix when that already exists. Starting over in a directory that holds a run
(``train.resume=false``) moves the old files into ``superseded-<time>/`` inside it: nothing of
the old run is overwritten.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from vlp.config import Config, config_to_yaml
from vlp.utils.atomic import write_json_atomic, write_text_atomic

RECORD_FILES = ("config.yaml", "metrics.jsonl", "metrics.superseded.jsonl", "train_summary.json", "eval_results.json",
                "checkpoints", "tensorboard", "wandb", "training_curves.png")


def claim_default_run_name(output_dir: str | Path, recipe: Optional[str]) -> str:
    """``<recipe>-<time>`` (``run-<time>`` without a recipe file), claimed by creating its folder
    under ``output_dir``, so two runs started in the same second get two names."""
    base = f"{recipe or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    name, n = base, 1
    while True:
        try:
            (Path(output_dir) / name).mkdir()
            return name
        except FileExistsError:
            n += 1
            name = f"{base}-{n}"


@dataclass
class RunDir:
    root: Path

    @classmethod
    def at(cls, cfg: Config, name: str) -> "RunDir":
        """The run directory ``name`` under ``train.output_dir`` (not created yet)."""
        return cls(Path(cfg.train.output_dir) / name)

    def create(self) -> None:
        (self.root / "checkpoints").mkdir(parents=True, exist_ok=True)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def record(self) -> List[Path]:
        """The files of a run already in this directory (empty for a new run)."""
        found = [self.root / n for n in RECORD_FILES if (self.root / n).exists()]
        return [p for p in found if not (p.is_dir() and not any(p.iterdir()))]

    def set_aside(self) -> Optional[Path]:
        """Move an existing run's files into ``superseded-<time>/``; returns that folder (None if nothing)."""
        files = self.record()
        if not files:
            return None
        folder = self.root / f"superseded-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while folder.exists():
            n += 1
            folder = self.root / f"superseded-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
        folder.mkdir(parents=True)
        for path in files:
            path.rename(folder / path.name)
        return folder

    def rewind_metrics(self, step: int) -> int:
        """Keep in metrics.jsonl the lines up to ``step`` (where a resumed run picks up); the lines
        of steps it will train again move to metrics.superseded.jsonl. Returns how many moved."""
        path = self.root / "metrics.jsonl"
        if not path.is_file():
            return 0
        keep, later = [], []
        for line in path.read_text().splitlines(keepends=True):
            try:
                after = int(json.loads(line)["step"]) > step
            except (ValueError, KeyError, TypeError):
                after = False  # a line that is not a record stays where it is
            (later if after else keep).append(line)
        if later:
            with open(self.root / "metrics.superseded.jsonl", "a") as f:
                f.writelines(later)
            write_text_atomic(path, "".join(keep))
        return len(later)

    def save_config(self, cfg: Config) -> None:
        write_text_atomic(self.config_path, config_to_yaml(cfg))

    def log_metrics(self, record: Dict[str, Any]) -> None:
        with open(self.root / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def save_json(self, name: str, obj: Any) -> Path:
        path = self.root / name
        write_json_atomic(path, obj)
        return path
