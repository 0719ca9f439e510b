"""Linear probe: weight-decay sweep on synthetic features, determinism, and end to end on tiny shards."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image

from eval.tasks.linear_probe import (
    DEFAULT_WEIGHT_DECAYS,
    best_weight_decay,
    evaluate_linear_probe,
    fit_linear_probe,
    linear_probe_features,
    probe_logits,
    split_train_val,
    train_logistic_regression,
    validation_score,
)


def gaussian_classes(
    n: int, means: torch.Tensor, noise: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` L2-normalised samples, classes in turn, each its class mean plus isotropic noise."""
    y = torch.arange(n) % means.shape[0]
    x = means[y] + noise * torch.randn(n, means.shape[1], generator=gen)
    return F.normalize(x, dim=1), y


def test_separable_features_reach_perfect_accuracy() -> None:
    gen = torch.Generator().manual_seed(0)
    means = F.normalize(torch.randn(6, 16, generator=gen), dim=1)
    train_x, train_y = gaussian_classes(120, means, 0.05, gen)
    test_x, test_y = gaussian_classes(60, means, 0.05, gen)
    result = linear_probe_features(train_x, train_y, test_x, test_y, 6, weight_decays=(1e-4, 1e-2), epochs=100)
    assert result["metrics"] == {"acc1": 1.0, "acc5": 1.0, "mean_per_class_recall": 1.0}
    assert result["weight_decay"] in (1e-4, 1e-2)
    # stratified 20% hold-out: round(0.2 * 20) = 4 of each class's 20 samples
    assert (result["num_train"], result["num_val"], result["num_test"]) == (96, 24, 60)
    assert [s["weight_decay"] for s in result["val_scores"]] == [1e-4, 1e-2]


def test_fewer_than_five_classes_gives_nan_acc5() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]] * 4)
    y = torch.tensor([0, 1] * 4)
    result = linear_probe_features(x, y, x, y, 2, x, y, weight_decays=(1e-3,), epochs=50)
    assert result["metrics"]["acc1"] == 1.0 and result["metrics"]["mean_per_class_recall"] == 1.0
    assert math.isnan(result["metrics"]["acc5"])


def test_chosen_weight_decay_is_best_of_a_direct_sweep() -> None:
    # Few samples, 8 informative dims among 256 noisy ones: the weight decay changes val accuracy.
    gen = torch.Generator().manual_seed(0)
    means = torch.zeros(4, 256)
    means[:, :8] = torch.randn(4, 8, generator=gen)
    train_x, train_y = gaussian_classes(16, means, 0.8, gen)
    val_x, val_y = gaussian_classes(400, means, 0.8, gen)
    classifier, chosen, val_scores = fit_linear_probe(train_x, train_y, val_x, val_y, 4, epochs=200, seed=0)

    direct = {wd: validation_score(train_logistic_regression(train_x, train_y, 4, wd, 200, 0), val_x, val_y)
              for wd in DEFAULT_WEIGHT_DECAYS}
    assert val_scores == direct
    best_acc = max(s["acc1"] for s in direct.values())
    assert direct[chosen]["acc1"] == best_acc
    assert chosen == min((wd for wd in direct if direct[wd]["acc1"] == best_acc), key=lambda wd: direct[wd]["loss"])
    accs = [s["acc1"] for s in direct.values()]
    assert max(accs) - min(accs) >= 0.01  # regularisation matters here
    assert chosen != min(DEFAULT_WEIGHT_DECAYS)
    # the returned classifier is the refit on train + val, not the sweep's probe
    refit = train_logistic_regression(torch.cat([train_x, val_x]), torch.cat([train_y, val_y]), 4, chosen, 200, 0)
    assert torch.equal(classifier.weight, refit.weight) and torch.equal(classifier.bias, refit.bias)


def test_best_weight_decay_tie_breaks() -> None:
    scores = {1e-3: {"acc1": 0.5, "loss": 0.9}, 1e-2: {"acc1": 0.5, "loss": 0.7}, 1e-1: {"acc1": 0.4, "loss": 0.1}}
    assert best_weight_decay(scores) == 1e-2  # equal acc1: lower loss wins
    assert best_weight_decay({1e-3: {"acc1": 0.5, "loss": 0.7}, 1e-2: {"acc1": 0.5, "loss": 0.7}}) == 1e-2


def test_weight_decay_shrinks_weights() -> None:
    gen = torch.Generator().manual_seed(1)
    x, y = gaussian_classes(40, torch.randn(2, 8, generator=gen), 0.3, gen)
    norms = [train_logistic_regression(x, y, 2, wd, 100).weight.norm().item() for wd in (1e-4, 1e-2, 1.0)]
    assert norms[0] > norms[1] > norms[2]


def test_fit_is_deterministic_for_a_seed() -> None:
    gen = torch.Generator().manual_seed(2)
    means = torch.randn(3, 32, generator=gen)
    train_x, train_y = gaussian_classes(30, means, 1.0, gen)
    val_x, val_y = gaussian_classes(30, means, 1.0, gen)
    runs = [fit_linear_probe(train_x, train_y, val_x, val_y, 3, (1e-3, 1e-1), epochs=50, seed=7) for _ in range(2)]
    (clf_a, wd_a, scores_a), (clf_b, wd_b, scores_b) = runs
    assert wd_a == wd_b and scores_a == scores_b
    assert torch.equal(clf_a.weight, clf_b.weight) and torch.equal(clf_a.bias, clf_b.bias)
    assert torch.equal(probe_logits(clf_a, val_x), probe_logits(clf_b, val_x))


def test_split_train_val_is_stratified_and_seeded() -> None:
    labels = torch.tensor([0] * 10 + [1] * 5 + [2])
    train_idx, val_idx = split_train_val(labels, 0.2, seed=3)
    assert torch.bincount(labels[val_idx], minlength=3).tolist() == [2, 1, 0]  # a single sample stays in train
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(16))
    again = split_train_val(labels, 0.2, seed=3)
    assert torch.equal(again[0], train_idx) and torch.equal(again[1], val_idx)
    other = split_train_val(labels, 0.2, seed=4)[1]
    assert not torch.equal(other, val_idx)
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(labels, 1.0)


def test_bad_inputs_raise() -> None:
    x, y = torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="labels must lie"):
        fit_linear_probe(x, y, x, y, 2)
    with pytest.raises(ValueError, match="validation split is empty"):
        fit_linear_probe(x, y, x[:0], y[:0], 3)


# ---------------------------------------------------------------- end to end on shards

COLORS = [(230, 30, 20), (20, 220, 40), (30, 40, 230)]


class MeanColor(torch.nn.Module):
    """Image embedding = mean RGB (the eval normalises it)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("dummy", torch.zeros(1))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))


@dataclass
class FakeLoaded:
    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_transform: Callable[[Image.Image], torch.Tensor]
    name: str


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255.0


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def write_split(root: Path, split: str, per_class: int, rng: np.random.Generator, extra: list[dict[str, Any]]) -> None:
    samples = []
    for i in range(per_class):
        for label, color in enumerate(COLORS):
            jitter = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in color)
            samples.append({"__key__": f"{split}{i:03d}_{label}", "png": png(jitter), "cls": str(label).encode()})
    samples += extra
    (root / split).mkdir(parents=True)
    half = len(samples) // 2
    for n, part in enumerate((samples[:half], samples[half:])):
        with wds.TarWriter(str(root / split / f"{n}.tar")) as sink:
            for sample in part:
                sink.write(sample)
    (root / split / "nshards.txt").write_text("2\n")


def make_probe_set(root: Path, with_val: bool = False) -> Path:
    root.mkdir(parents=True)
    (root / "classnames.txt").write_text("red\ngreen\nblue\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    rng = np.random.default_rng(0)
    write_split(root, "train", 8, rng, [{"__key__": "bad", "png": b"not a png", "cls": b"0"}])
    write_split(root, "test", 4, rng, [{"__key__": "nolabel", "png": png(COLORS[0])}])
    if with_val:
        write_split(root, "val", 2, rng, [])
    return root


def nan_free(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with NaN metrics replaced by the string "nan" (NaN != NaN)."""
    metrics = {k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in result["metrics"].items()}
    return {**result, "metrics": metrics}


def fake_loaded() -> FakeLoaded:
    return FakeLoaded(MeanColor(), lambda texts: torch.zeros(len(texts), 1, dtype=torch.long), to_tensor, "mean-color")


def test_evaluate_linear_probe_end_to_end(tmp_path: Path) -> None:
    root = make_probe_set(tmp_path / "colors")
    result = evaluate_linear_probe(fake_loaded(), root, batch_size=5, progress=False,
                                   weight_decays=(1e-4, 1e-2), epochs=100, val_fraction=0.25)
    assert result["dataset"] == "colors" and result["model"] == "mean-color" and result["task"] == "linear_probe"
    assert result["metrics"]["acc1"] == 1.0 and result["metrics"]["mean_per_class_recall"] == 1.0
    assert math.isnan(result["metrics"]["acc5"])  # 3 classes
    # 24 good train images, round(0.25 * 8) = 2 per class held out; 12 good test images
    assert (result["num_train"], result["num_val"], result["num_test"]) == (18, 6, 12)
    assert result["skipped"] == 2  # corrupt train image + test sample without .cls
    assert result["weight_decay"] in (1e-4, 1e-2) and result["val_fraction"] == 0.25
    again = evaluate_linear_probe(fake_loaded(), root, batch_size=7, progress=False,
                                  weight_decays=(1e-4, 1e-2), epochs=100, val_fraction=0.25)
    assert again["val_scores"] == result["val_scores"] and nan_free(again) == nan_free(result)


def test_evaluate_linear_probe_uses_val_split(tmp_path: Path) -> None:
    root = make_probe_set(tmp_path / "colors", with_val=True)
    result = evaluate_linear_probe(fake_loaded(), root, batch_size=8, progress=False,
                                   weight_decays=(1e-3,), epochs=50)
    assert (result["num_train"], result["num_val"], result["num_test"]) == (24, 6, 12)
    assert result["val_fraction"] is None and result["weight_decay"] == 1e-3
    assert result["metrics"]["acc1"] == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_probe_trains_on_cuda() -> None:
    gen = torch.Generator().manual_seed(0)
    means = F.normalize(torch.randn(6, 16, generator=gen), dim=1)
    train_x, train_y = gaussian_classes(120, means, 0.05, gen)
    test_x, test_y = gaussian_classes(60, means, 0.05, gen)
    result = linear_probe_features(train_x, train_y, test_x, test_y, 6, weight_decays=(1e-4, 1e-2), epochs=100,
                                   device="cuda")
    assert result["metrics"] == {"acc1": 1.0, "acc5": 1.0, "mean_per_class_recall": 1.0}
    assert (result["num_train"], result["num_val"], result["num_test"]) == (96, 24, 60)


def test_linear_probe_task_through_an_encoder(tmp_path: Path) -> None:
    """The encoder path (duck-typed: ``images(dataset)`` -> records, embeddings, skipped) gives
    the same result as encoding the shards directly."""
    from types import SimpleNamespace

    from eval.datasets.shards import ClassificationShards
    from eval.tasks.linear_probe import encode_classification_split, linear_probe_task

    root = make_probe_set(tmp_path / "colors")
    loaded = fake_loaded()

    class DirectEncoder:
        source = SimpleNamespace(name=loaded.name)
        device = torch.device("cpu")

        def images(self, dataset: ClassificationShards, desc: str = "") -> SimpleNamespace:
            x, y, skipped = encode_classification_split(loaded, dataset, 4, progress=False)
            records = [SimpleNamespace(label=int(label)) for label in y]
            return SimpleNamespace(records=records, embeddings=x, skipped=skipped)

    datasets = {split: ClassificationShards(root, loaded.image_transform, split) for split in ("train", "test")}
    options = dict(weight_decays=(1e-4, 1e-2), epochs=100, val_fraction=0.25)
    via_encoder = linear_probe_task(DirectEncoder(), datasets, **options)
    direct = evaluate_linear_probe(loaded, root, batch_size=5, progress=False, **options)
    assert nan_free(via_encoder) == nan_free(direct)
