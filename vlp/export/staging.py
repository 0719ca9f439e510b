"""Writing an export whole or not at all: the checks and the staging folder every format uses.

An export is built in a hidden folder beside its destination and renamed into place when every
file is written (and, where the format has one, its parity check passed); a failure leaves the
destination as it was. A destination that holds something other than an earlier export of the same
format is refused before anything is written.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterator

import torch
from safetensors.torch import save_file

from vlp.utils.atomic import atomic_path


class UnsupportedExport(ValueError):
    """The model has a part the target format has no counterpart for (raised before any write)."""


def save_safetensors_atomic(tensors: Dict[str, torch.Tensor], path: Path, metadata: Dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def check_replaceable(out_dir: Path, marker: str) -> None:
    """``out_dir`` is new, empty, or an earlier export (it holds ``marker``), which is replaced."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--output {out_dir} is a file; name a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / marker).is_file():
        raise FileExistsError(f"--output {out_dir} is a folder that is not an earlier export (no {marker}); "
                              "name a new or empty folder")


@contextlib.contextmanager
def staged_dir(out_dir: Path) -> Iterator[Path]:
    """A hidden folder beside ``out_dir`` that replaces it when the block succeeds (removed if it fails)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        yield stage
        stage.chmod(0o755)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            out_dir.replace(old / out_dir.name)
            stage.replace(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            stage.replace(out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
