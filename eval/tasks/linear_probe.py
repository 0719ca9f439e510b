"""Linear probe: logistic regression on frozen, L2-normalised image features.

Protocol (what :func:`fit_linear_probe` does):

1. For each weight decay ``wd`` in a log-spaced grid (default ``1e-6 .. 1``, one per decade),
   train a softmax classifier ``logits = x @ W.T + b`` on the train split by minimising
   ``mean cross-entropy + wd / 2 * ||W||_F^2`` (the bias is not penalised) with full-batch
   L-BFGS (strong-Wolfe line search, at most ``epochs`` iterations, float32). The objective is
   convex, and for ``wd > 0`` its optimal weights and predictions are unique, so the result
   hardly depends on the start; the start is drawn from ``seed`` and the whole fit is
   deterministic for a seed on a given device.
2. Score each on the validation split: ``acc1`` first, the lower validation cross-entropy
   (unpenalised) breaking ties, and on an exact tie the larger ``wd`` (the simpler model).
3. Refit on train + validation with the chosen ``wd``; that classifier is evaluated on test.

CLIP_benchmark (``clip_benchmark/metrics/linear_probe.py``) also featurises with
``F.normalize(model.encode_image(x))`` and reports ``acc1``, ``acc5`` (NaN under 5 classes) and
``mean_per_class_recall`` (balanced accuracy) on the test split. The release we read trains
one AdamW probe (fixed learning rate, cosine schedule, ``weight_decay=0``); later versions
search the weight decay on a validation split held out of train, as we do. Our optimiser
differs (full-batch L-BFGS on an explicitly penalised objective instead of mini-batch AdamW),
so numbers can differ slightly from theirs.

When a dataset has no ``val`` split, validation is a seeded, class-stratified ``val_fraction``
of train (see :func:`split_train_val`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from eval.datasets.kinds import DatasetSpec
from eval.datasets.shards import ClassificationShards
from eval.encoding.embed import EvalModel
from eval.encoding.encoder import Encoder
from eval.metrics import zeroshot_metrics
from eval.tasks.task import Task

RESULT_TASK = "linear_probe"  # the result's `task` field (CLIP_benchmark's name)
DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = tuple(10.0**e for e in range(-6, 1))
DEFAULT_EPOCHS = 200
DEFAULT_VAL_FRACTION = 0.2


def _check(x: torch.Tensor, y: torch.Tensor, num_classes: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() != 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: need features [N, D] and labels [N], got {tuple(x.shape)} and {tuple(y.shape)}")
    y = y.long()
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{name}: labels must lie in [0, {num_classes}), got {int(y.min())}..{int(y.max())}")
    return x.float(), y


def train_logistic_regression(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
) -> torch.nn.Linear:
    """Softmax regression ``[D] -> [num_classes]`` minimising mean CE + ``wd/2 * ||W||^2``.

    Full-batch L-BFGS on ``x``'s device, at most ``epochs`` iterations; returns the layer in eval
    mode with gradients off. Deterministic for a seed.
    """
    x, y = _check(x, y, num_classes, "train")
    if x.shape[0] == 0:
        raise ValueError("cannot train a linear probe on zero samples")
    if weight_decay < 0 or epochs < 1:
        raise ValueError(f"need weight_decay >= 0 and epochs >= 1, got {weight_decay} and {epochs}")
    generator = torch.Generator().manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], num_classes).to(x.device)
    with torch.no_grad():
        probe.weight.copy_(1e-3 * torch.randn(probe.weight.shape, generator=generator))
        probe.bias.zero_()
    optimizer = torch.optim.LBFGS(
        probe.parameters(), lr=1.0, max_iter=epochs, history_size=20,
        tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(x), y) + 0.5 * weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    probe.eval()
    probe.requires_grad_(False)
    return probe


@torch.no_grad()
def probe_logits(classifier: torch.nn.Module, x: torch.Tensor, chunk_size: int = 65536) -> torch.Tensor:
    """[N, C] logits of ``classifier`` on features ``x``, in chunks, as float32 on the CPU."""
    device = next(classifier.parameters()).device
    chunks = [classifier(x[s : s + chunk_size].float().to(device)).cpu() for s in range(0, x.shape[0], chunk_size)]
    return torch.cat(chunks) if chunks else torch.zeros(0, classifier.out_features)


def validation_score(classifier: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """``{"acc1", "loss"}`` of ``classifier`` on a validation split (loss = mean cross-entropy)."""
    logits = probe_logits(classifier, x)
    y = y.long().view(-1).cpu()
    acc1 = (logits.argmax(dim=1) == y).double().mean().item()
    return {"acc1": acc1, "loss": F.cross_entropy(logits, y).item()}


def best_weight_decay(val_scores: dict[float, dict[str, float]]) -> float:
    """Highest val ``acc1``; ties -> lower val ``loss``; still tied -> the larger weight decay."""
    return max(val_scores, key=lambda wd: (val_scores[wd]["acc1"], -val_scores[wd]["loss"], wd))


def fit_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
) -> tuple[torch.nn.Linear, float, dict[float, dict[str, float]]]:
    """Sweep ``weight_decays`` on (train, val), refit on train + val with the best one.

    Returns ``(classifier, chosen_wd, val_scores)`` with ``val_scores[wd] = {"acc1", "loss"}``
    of the probe trained on train only. See the module docstring for the protocol.
    """
    train_x, train_y = _check(train_x, train_y, num_classes, "train")
    val_x, val_y = _check(val_x, val_y, num_classes, "val")
    if val_x.shape[0] == 0:
        raise ValueError("the validation split is empty: give a val split or more train samples")
    if not weight_decays:
        raise ValueError("weight_decays must hold at least one value")
    val_scores = {
        float(wd): validation_score(train_logistic_regression(train_x, train_y, num_classes, wd, epochs, seed),
                                    val_x, val_y)
        for wd in weight_decays
    }
    chosen = best_weight_decay(val_scores)
    classifier = train_logistic_regression(
        torch.cat([train_x, val_x.to(train_x.device)]), torch.cat([train_y, val_y.to(train_y.device)]),
        num_classes, chosen, epochs, seed,
    )
    return classifier, chosen, val_scores


def split_train_val(labels: torch.Tensor, val_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, class-stratified split of sample indices -> ``(train_idx, val_idx)``, both sorted.

    Each class gives ``round(val_fraction * n_c)`` of its ``n_c`` samples to val, but always
    keeps at least one in train (so a class seen once is never held out).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    labels = labels.long().view(-1).cpu()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(labels.numel(), generator=generator)
    val_parts = []
    for cls in torch.unique(labels).tolist():
        members = order[labels[order] == cls]  # this class's indices in the seeded order
        n_val = min(int(round(val_fraction * members.numel())), members.numel() - 1)
        val_parts.append(members[:n_val])
    val_idx = torch.cat(val_parts).sort().values if val_parts else torch.zeros(0, dtype=torch.long)
    is_val = torch.zeros(labels.numel(), dtype=torch.bool)
    is_val[val_idx] = True
    return torch.nonzero(~is_val).view(-1), val_idx


def linear_probe_features(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    val_x: torch.Tensor | None = None,
    val_y: torch.Tensor | None = None,
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Linear probe on already-computed features (e.g. cached embeddings).

    Without ``val_x``/``val_y``, validation is :func:`split_train_val` of train. The probe is
    trained on ``device`` (default: where ``train_x`` lies); full-batch L-BFGS holds about
    three ``[num_train, num_classes]`` float32 tensors there. Returns
    ``{"metrics": {acc1, acc5, mean_per_class_recall}, "weight_decay", "val_scores" (list of
    {weight_decay, acc1, loss}), "num_train", "num_val", "num_test"}``; ``num_train`` counts the
    samples the sweep trained on (the final probe sees ``num_train + num_val``).
    """
    if (val_x is None) != (val_y is None):
        raise ValueError("give both val_x and val_y, or neither")
    if val_x is None or val_y is None:
        train_idx, val_idx = split_train_val(train_y, val_fraction, seed)
        train_x, train_y, val_x, val_y = train_x[train_idx], train_y[train_idx], train_x[val_idx], train_y[val_idx]
    test_x, test_y = _check(test_x, test_y, num_classes, "test")
    if device is not None:
        train_x, train_y, val_x, val_y = (t.to(device) for t in (train_x, train_y, val_x, val_y))
    classifier, chosen, val_scores = fit_linear_probe(
        train_x, train_y, val_x, val_y, num_classes, weight_decays=weight_decays, epochs=epochs, seed=seed
    )
    metrics = zeroshot_metrics(probe_logits(classifier, test_x).reshape(-1, num_classes), test_y.cpu())
    return {
        "metrics": metrics,
        "weight_decay": chosen,
        "val_scores": [{"weight_decay": wd, **score} for wd, score in val_scores.items()],
        "num_train": int(train_y.numel()),
        "num_val": int(val_y.numel()),
        "num_test": int(test_y.numel()),
    }


def encode_classification_split(
    loaded: EvalModel,
    dataset: ClassificationShards,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(features [N, D], labels [N], skipped)`` of one split, L2-normalised image features."""
    images = Encoder.for_loaded(loaded, batch_size, device, num_workers, progress).images(
        dataset, desc=f"linear probe {dataset.name}/{dataset.split}")
    labels = torch.tensor([r.label for r in images.records], dtype=torch.long)
    return images.embeddings, labels, images.skipped


def probe_splits(root: str | os.PathLike[str]) -> list[str]:
    """``["train", "test"]`` plus ``"val"`` when ``root/val/nshards.txt`` exists."""
    return ["train", "test"] + (["val"] if (Path(root) / "val" / "nshards.txt").is_file() else [])


def _probe_result(
    dataset: str,
    model: str,
    encoded: dict[str, tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    skipped: int,
    options: dict[str, Any],
    device: torch.device | str | None,
) -> dict[str, Any]:
    """Result dict from encoded ``train``/``test`` (and optional ``val``) features and labels."""
    train_x, train_y = encoded["train"]
    if train_y.numel() == 0:
        raise ValueError(f"{dataset}: the train split has no readable samples: cannot train a linear probe")
    test_x, test_y = encoded["test"]
    if test_y.numel() == 0:
        test_x = torch.zeros(0, train_x.shape[1])
    val_x, val_y = encoded.get("val", (None, None))
    result = linear_probe_features(train_x, train_y, test_x, test_y, num_classes, val_x, val_y, device=device,
                                   **options)
    return {
        "dataset": dataset,
        "model": model,
        "task": RESULT_TASK,
        **result,
        "skipped": skipped,
        "epochs": options["epochs"],
        "seed": options["seed"],
        "val_fraction": None if "val" in encoded else options["val_fraction"],
    }


def evaluate_linear_probe(
    loaded: EvalModel,
    dataset_dir: str | os.PathLike[str],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
) -> dict[str, Any]:
    """Linear probe of ``loaded``'s image tower on a CLIP_benchmark webdataset classification set.

    Encodes ``dataset_dir/train`` and ``dataset_dir/test`` (and ``dataset_dir/val`` when it has
    an ``nshards.txt``; otherwise val is a seeded ``val_fraction`` of train). Keys: dataset,
    model, task ("linear_probe"), metrics {acc1, acc5, mean_per_class_recall}, weight_decay
    (chosen), val_scores, num_train, num_val, num_test, skipped (all splits), epochs, seed,
    val_fraction (None with a val split). The probe is trained on ``device`` (default: the
    model's device).
    """
    datasets = {split: ClassificationShards(dataset_dir, split=split) for split in probe_splits(dataset_dir)}
    encoder = Encoder.for_loaded(loaded, batch_size, device, num_workers, progress)
    return linear_probe_task(encoder, datasets, val_fraction=val_fraction, weight_decays=weight_decays,
                             epochs=epochs, seed=seed, device=encoder.device)


def linear_probe_task(
    encoder: Any,
    datasets: dict[str, Any],
    options: dict[str, Any] | None = None,
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Linear probe through an :class:`~eval.encoding.encoder.Encoder` (embedding cache, several ranks).

    ``datasets`` maps ``"train"``, ``"test"`` and optionally ``"val"`` to classification readers
    (with ``classnames``); ``encoder.images(dataset, desc=...)`` must give ``records`` (with
    ``label``), ``embeddings`` and ``skipped``, and ``encoder.source.name`` the model name. Same
    result dict as :func:`evaluate_linear_probe`. ``options`` (the task options of ``eval run``)
    has nothing for this task.
    """
    if "train" not in datasets or "test" not in datasets:
        raise ValueError(f"linear probe needs 'train' and 'test' datasets, got {sorted(datasets)}")
    encoded, skipped = {}, 0
    for split, dataset in datasets.items():
        images = encoder.images(dataset, desc=f"linear probe {dataset.name}/{split}")
        labels = torch.tensor([r.label for r in images.records], dtype=torch.long)
        encoded[split] = (images.embeddings.float().cpu(), labels)
        skipped += int(images.skipped)
    test = datasets["test"]
    options = {"val_fraction": val_fraction, "weight_decays": weight_decays, "epochs": epochs, "seed": seed}
    device = device if device is not None else getattr(encoder, "device", None)
    return _probe_result(test.name, encoder.source.name, encoded, len(test.classnames), skipped, options, device)


def open_probe_splits(spec: DatasetSpec, options: dict[str, Any]) -> dict[str, ClassificationShards]:
    """train/test (and val when present) readers of a CLIP_benchmark classification folder."""
    splits = probe_splits(spec.path)
    missing = [s for s in ("train", "test") if not (spec.path / s / "nshards.txt").is_file()]
    if missing:
        raise FileNotFoundError(f"linear_probe needs {spec.path}/train and /test shards "
                                f"(missing: {', '.join(missing)})")
    return {split: ClassificationShards(spec.path, split=split) for split in splits}


TASK = Task(name="linear_probe", kinds=("classification",), open=open_probe_splits, run=linear_probe_task,
            help="logistic regression on frozen image features (train/test splits)", order=50)
