"""Embedding diagnostics on hand-built embeddings with known answers, and end to end on a retrieval set."""

from __future__ import annotations

import io
import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from eval.tasks.diagnostics import (
    NEGATIVE_COLOR,
    POSITIVE_COLOR,
    alignment,
    effective_rank,
    embedding_metrics,
    evaluate_diagnostics,
    histogram,
    histogram_png,
    modality_gap,
    similarity_split,
    uniformity,
)
from tests.test_eval_datasets import RETRIEVAL_CAPTIONS, WORDS, FakeLoaded, fake_loaded, make_retrieval


def test_modality_gap_is_centroid_distance() -> None:
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    texts = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert modality_gap(images, texts) == pytest.approx(math.sqrt(2))
    assert modality_gap(images, images) == 0.0
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # centroid (0.5, 0.5)
    assert modality_gap(mixed, texts) == pytest.approx(math.sqrt(0.5))


def test_uniformity_known_values() -> None:
    assert uniformity(torch.eye(3)) == pytest.approx(-4.0)  # every pair at squared distance 2
    assert uniformity(torch.ones(4, 2) / math.sqrt(2)) == pytest.approx(0.0)  # collapsed
    antipodal = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert uniformity(antipodal) == pytest.approx(-8.0)
    # three points: squared distances 2, 2, 4 -> log((2 e^-4 + e^-8) / 3)
    three = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert uniformity(three) == pytest.approx(math.log((2 * math.exp(-4) + math.exp(-8)) / 3))
    assert math.isnan(uniformity(torch.ones(1, 3)))


def test_alignment_known_values() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert alignment(x, y) == pytest.approx(1.0)  # (2 + 0) / 2
    assert alignment(x, x) == 0.0
    with pytest.raises(ValueError):
        alignment(x, y[:1])


def test_effective_rank_known_values() -> None:
    assert effective_rank(torch.eye(4)) == pytest.approx(4.0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert effective_rank(q[:3]) == pytest.approx(3.0)  # orthonormal rows
    assert effective_rank(torch.tensor([[1.0, 0.0], [1.0, 0.0]])) == pytest.approx(1.0)
    p = torch.tensor([0.75, 0.25], dtype=torch.float64)
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    assert math.isnan(effective_rank(torch.zeros(2, 2)))


def test_similarity_split_and_histogram() -> None:
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [-0.5, 0.7]])  # texts 0,1 -> image 0, text 2 -> image 1
    positive, negative = similarity_split(scores, torch.tensor([0, 0, 1]))
    assert positive.tolist() == pytest.approx([0.9, 0.2, 0.7])
    assert negative.tolist() == pytest.approx([0.1, 0.8, -0.5])
    assert histogram(torch.tensor([-1.0, 0.0, 0.99, 1.0]), bins=4) == pytest.approx([0.25, 0.0, 0.25, 0.5])
    assert histogram(torch.tensor([-3.0, 2.0]), bins=2) == pytest.approx([0.5, 0.5])  # clamped into range
    assert histogram(torch.zeros(0), bins=3) == [0.0, 0.0, 0.0]


def test_histogram_png_draws_both_series() -> None:
    data = histogram_png([0.0, 0.0, 1.0, 0.0], [0.25, 0.0, 0.0, 0.0], size=(400, 300))
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (400, 300)
    colours = dict((c, n) for n, c in image.convert("RGB").getcolors(400 * 300))
    assert colours[POSITIVE_COLOR] > 3 * colours[NEGATIVE_COLOR] > 0  # full-height bar vs a quarter-height one
    rgb = image.convert("RGB")
    # plot area x from 50 to 380, 82.5 px per bin: the positive bar sits in bin 2, the negative in bin 0
    assert rgb.getpixel((50 + 2 * 82 + 20, 250)) == POSITIVE_COLOR
    assert rgb.getpixel((50 + 60, 255)) == NEGATIVE_COLOR and rgb.getpixel((50 + 60, 100)) == (255, 255, 255)
    with pytest.raises(ValueError):
        histogram_png([0.1], [0.1, 0.2])


def test_diagnostics_end_to_end(tmp_path: Path) -> None:
    png = tmp_path / "plots" / "sim.png"
    result = evaluate_diagnostics(fake_loaded(), make_retrieval(tmp_path / "ret"), histogram_path=png,
                                  batch_size=2, progress=False, bins=10)
    m = result["metrics"]
    # images: one-hot red, green, blue; texts: the colour-word vectors of the captions, normalised
    images = torch.eye(3, dtype=torch.float64)
    captions = [(i, c) for i, (_, (_, text)) in enumerate(RETRIEVAL_CAPTIONS.items()) for c in text.splitlines()]
    texts = F.normalize(torch.tensor([WORDS[c.split()[1]] for _, c in captions], dtype=torch.float64), dim=1)
    owner = torch.tensor([i for i, _ in captions])
    positive = (texts * images[owner]).sum(1)
    assert m["mean_positive_similarity"] == pytest.approx(positive.mean().item())
    assert m["mean_positive_similarity"] == pytest.approx((0.6 + 1 + 1 + 0.28 + 0.6 + 1 / 3) / 6, abs=1e-6)
    assert m["alignment"] == pytest.approx(2 - 2 * positive.mean().item(), abs=1e-6)
    assert m["modality_gap"] == pytest.approx((images.mean(0) - texts.mean(0)).norm().item(), abs=1e-6)
    assert m["effective_rank_image"] == pytest.approx(3.0) and m["uniformity_image"] == pytest.approx(-4.0)
    assert m["mean_negative_similarity"] == pytest.approx(((texts @ images.T).sum() - positive.sum()).item() / 12)
    assert m == pytest.approx(embedding_metrics(images.float(), texts.float(), owner), abs=1e-6)
    assert (result["num_images"], result["num_texts"], result["skipped"]) == (3, 6, 1)
    assert sum(result["histogram"]["positive"]) == pytest.approx(1.0) and len(result["histogram"]["negative"]) == 10
    assert result["histogram"]["positive"][9] == pytest.approx(2 / 6)  # "a red square", "a green circle": cosine 1
    assert Image.open(png).format == "PNG" and result["histogram_png"] == str(png)


def test_cli_diagnostics_writes_json_and_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eval.__main__ import main

    def load_eval_model(path: str, device: str = "cpu", model_config: str | None = None,
                        allow_mismatch: bool = False) -> FakeLoaded:
        return fake_loaded()

    monkeypatch.setitem(sys.modules, "vlp.interop.load", types.SimpleNamespace(load_eval_model=load_eval_model))
    ckpt = tmp_path / "run"
    ckpt.mkdir()
    out = tmp_path / "diag.json"
    assert main(["diagnostics", "--model", str(ckpt), "--dataset", str(make_retrieval(tmp_path / "ret")),
                 "--output", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["task"] == "embedding_diagnostics" and result["metrics"]["effective_rank_image"] == pytest.approx(3.0)
    assert Image.open(tmp_path / "diag.png").size == (720, 400)
