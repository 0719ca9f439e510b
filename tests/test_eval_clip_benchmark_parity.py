"""Parity with CLIP_benchmark's own metric code on random embeddings (ties included).

clip_benchmark runs in its own environment (``benchmarks/anchor_env.py``: it needs requests,
scikit-learn and numpy<2.4), built from the package index on first use; its ``evaluate``
functions are fed exactly our embeddings through a lookup model, and every metric must agree.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from eval.metrics import build_classifier, retrieval_recall, zeroshot_logits, zeroshot_metrics
from eval.encoding.search import search_recall

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _case(seed: int, ties: bool) -> dict:
    g = torch.Generator().manual_seed(seed)
    n, c, t, d, images = 97, 7, 3, 8, 41

    def emb(*shape):
        x = torch.randn(*shape, generator=g)
        return x.round() if ties else x  # integer-valued vectors: many exactly tied scores

    per_image = torch.randint(1, 5, (images,), generator=g)
    return {"image_emb": emb(n, d), "labels": torch.randint(0, c, (n,), generator=g), "prompt_emb": emb(c * t, d),
            "num_classes": c, "num_templates": t, "batch_size": 16, "ret_image_emb": emb(images, d),
            "ret_text_emb": emb(int(per_image.sum()), d), "captions_per_image": per_image}


CASES = [(0, False), (1, False), (2, True), (3, True)]


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict:
    """clip_benchmark's outputs for every case, computed in one run of its environment."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from anchor_env import clip_benchmark_env

    python = clip_benchmark_env()
    work = tmp_path_factory.mktemp("clip_benchmark")
    argv = []
    for seed, ties in CASES:
        torch.save(_case(seed, ties), work / f"case{seed}.pt")
        argv += [str(work / f"case{seed}.pt"), str(work / f"ref{seed}.json")]
    subprocess.run([str(python), str(ROOT / "tests" / "clip_benchmark_reference.py"), *argv], check=True)
    return {seed: json.loads((work / f"ref{seed}.json").read_text()) for seed, _ in CASES}


@pytest.mark.parametrize("seed,ties", CASES)
def test_metrics_equal_clip_benchmark(references: dict, seed: int, ties: bool) -> None:
    case = _case(seed, ties)
    ref = references[seed]

    c, t = case["num_classes"], case["num_templates"]
    classifier = build_classifier(case["prompt_emb"].view(c, t, -1))
    torch.testing.assert_close(classifier, torch.tensor(ref["classifier"]), rtol=0, atol=1e-6)
    ours = zeroshot_metrics(zeroshot_logits(case["image_emb"], classifier), case["labels"])
    for key, value in ref["zeroshot"].items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key

    owners = torch.tensor(ref["owners"])
    images, texts = F.normalize(case["ret_image_emb"], dim=-1), F.normalize(case["ret_text_emb"], dim=-1)
    dense = retrieval_recall(texts @ images.T, owners)
    searched = search_recall(texts, images, owners, backend="torch")
    faiss_flat = search_recall(texts, images, owners, backend="faiss-flat")
    for key, value in ref["retrieval"].items():
        assert dense[key] == pytest.approx(value, abs=1e-6), key
        assert searched[key] == dense[key] == faiss_flat[key], key
    assert not any(math.isnan(v) for v in ref["retrieval"].values())
