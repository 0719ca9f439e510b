"""The run directory: resolved config, metrics as JSON lines, checkpoints, final results."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

from vlp.config import Config, config_to_yaml
from vlp.utils.atomic import write_json_atomic, write_text_atomic


@dataclass
class RunDir:
    root: Path

    @classmethod
    def create(cls, cfg: Config) -> "RunDir":
        name = cfg.train.run_name or time.strftime("run-%Y%m%d-%H%M%S")
        root = Path(cfg.train.output_dir) / name
        (root / "checkpoints").mkdir(parents=True, exist_ok=True)
        return cls(root)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def save_config(self, cfg: Config) -> None:
        write_text_atomic(self.root / "config.yaml", config_to_yaml(cfg))

    def log_metrics(self, record: Dict[str, Any]) -> None:
        with open(self.root / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def save_json(self, name: str, obj: Any) -> Path:
        path = self.root / name
        write_json_atomic(path, obj)
        return path
