"""Writing eval results as JSON, atomically (temp file in the same folder + ``os.replace``)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from vlp.utils.atomic import write_text_atomic


def to_jsonable(value: Any) -> Any:
    """Tensors, numpy scalars, tuples and paths -> plain JSON types (NaN stays a float NaN)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.tolist() if value.numel() != 1 else value.item())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    return value


def dumps(result: dict[str, Any]) -> str:
    """Indented JSON text. NaN is written as ``NaN``, as CLIP_benchmark's ``json.dump`` does."""
    return json.dumps(to_jsonable(result), indent=2, sort_keys=False, allow_nan=True) + "\n"


def write_result(path: str | os.PathLike[str], result: dict[str, Any]) -> Path:
    """Write ``result`` to ``path`` atomically; a crash never leaves a half-written file there."""
    write_text_atomic(path, dumps(result))
    return Path(path)


def read_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a result JSON written by :func:`write_result` (NaN parsed back to float NaN)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def is_nan(value: Any) -> bool:
    """True for a float NaN (used when printing metrics)."""
    return isinstance(value, float) and math.isnan(value)
