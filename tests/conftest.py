"""Shared fixtures: a tiny shapes dataset generated once per test session."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """256 training images in 4 shards, small eval sets, 48 px, seed 0."""
    from data_prep.synth_shapes import SynthShapesConfig, generate

    out = tmp_path_factory.mktemp("shapes")
    generate(SynthShapesConfig(out=str(out), train_samples=256, seed=0, image_size=48, shard_size=64,
                               zeroshot_per_class=2, retrieval_samples=24, compositional_samples=24),
             workers=1, progress=False)
    return out


@pytest.fixture()
def cli_env() -> dict:
    """Environment for running the project's CLIs in a subprocess from the repository root."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture(autouse=True)
def _eval_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Eval CLIs cache embeddings under a per-session temporary folder, never in ~/.cache."""
    monkeypatch.setenv("VLP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "eval-cache"))
