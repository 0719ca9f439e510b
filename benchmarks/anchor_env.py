"""Separate environments for the anchors the benchmarks compare against.

An anchor environment is a venv whose own site-packages hold only what the anchor needs beyond
the project (and what must differ from the project's versions), with a ``.pth`` file that then
adds the project environment's site-packages after them: the same torch, torchvision, Pillow and
open_clip, so only the code under test differs. Created on first use, reused after.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]


def ensure_env(name: str, check: str, packages: Sequence[str], no_deps: Sequence[str] = ()) -> Path:
    """Python of ``ROOT/name``; built when ``python -c check`` fails there. ``packages`` install
    with their dependencies, ``no_deps`` without (their declared dependencies are in the project
    environment already, or unused)."""
    env = ROOT / name
    python = env / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0:
        return python
    print(f"creating the anchor environment {env} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "zz_vlp_main_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    if packages:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    if no_deps:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", *no_deps], check=True)
    subprocess.run([str(python), "-c", check], check=True)
    return python


CLIP_BENCHMARK_CHECK = ("import numpy, sklearn, requests, clip_benchmark.cli; "
                        "assert tuple(int(x) for x in numpy.__version__.split('.')[:2]) < (2, 4), numpy.__version__")


def clip_benchmark_env() -> Path:
    """``.venv-anchor-eval``: clip_benchmark with requests, scikit-learn and numpy<2.4."""
    return ensure_env(".venv-anchor-eval", CLIP_BENCHMARK_CHECK,
                      packages=["numpy<2.4", "requests", "scikit-learn<2"],
                      no_deps=["clip_benchmark", "pycocoevalcap"])
