"""ARO benchmarks (Yuksekgonul et al. 2023) read from the published files in a local folder.

VG-Relation / VG-Attribution::

    DIR/visual_genome_relation.json      [{image_path, bbox_x, bbox_y, bbox_w, bbox_h,
    DIR/visual_genome_attribution.json     true_caption, false_caption, relation_name | attributes}]
    DIR/images/<image_path>              (ARO's image_root; DIR/<image_path> when DIR/images is absent)

Each image is cropped to its bounding box. A sample is correct when the true caption scores
strictly higher than the false one. ``macro_accuracy`` averages over relation names
(VG-Relation) or attribute pairs ``"<attr0>_<attr1>"`` (VG-Attribution) as the ARO repo does. For
VG-Relation, ``macro_accuracy`` is the published headline number: the relations in
:data:`eval.benchmarks.aro_relations.SYMMETRIC_RELATIONS` are left out of the average, as the authors'
replication notebook does (``macro_accuracy_all_relations`` keeps them; ``symmetric_filter=False``
makes the headline keep them too). ``exclude`` drops further relations or attribute pairs.

COCO-Order / Flickr30k-Order (Karpathy test split, BLIP format)::

    DIR/coco_karpathy_test.json   or   DIR/flickr30k_test.json   [{"image": rel/path.jpg, "caption": [str]}]

Every caption of every image is one sample with five options: the caption and its four seeded
perturbations (:mod:`eval.benchmarks.aro_perturb`); correct when the caption beats all four strictly.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import torch

from eval.benchmarks.aro_perturb import PERTURBATIONS, order_options
from eval.benchmarks.aro_relations import SYMMETRIC_RELATIONS
from eval.benchmarks.choices import CaptionChoice, ChoiceSet, score_choices
from eval.benchmarks.metrics import aro_vg_metrics, best_of_options
from eval.encoding.embed import EvalModel
from eval.encoding.encoder import Encoder

VG_FILES = {"vg_relation": "visual_genome_relation.json", "vg_attribution": "visual_genome_attribution.json"}
ORDER_FILES = {"coco_order": "coco_karpathy_test.json", "flickr30k_order": "flickr30k_test.json"}
SUBSETS: tuple[str, ...] = (*VG_FILES, *ORDER_FILES)
RESULT_TASK = "aro"  # the result's `task` field (CLIP_benchmark's name)


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"missing ARO file: {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def _group_name(subset: str, item: dict[str, Any]) -> str:
    if subset == "vg_relation":
        return str(item["relation_name"])
    first, second = item["attributes"]
    return f"{first}_{second}"


def read_vg(root: str | os.PathLike[str], subset: str) -> tuple[list[CaptionChoice], list[str], list[tuple[str, str]]]:
    """Choices (image crop, [true, false] captions), their group names and malformed entries."""
    root = Path(root)
    items = _load_json(root / VG_FILES[subset])
    if not isinstance(items, list):
        raise ValueError(f"{root / VG_FILES[subset]} must hold a JSON list")
    image_root = root / "images" if (root / "images").is_dir() else root
    choices, groups, bad = [], [], []
    for index, item in enumerate(items):
        try:
            x, y, w, h = (float(item[k]) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
            captions = [str(item["true_caption"]), str(item["false_caption"])]
            group = _group_name(subset, item)
            choices.append(CaptionChoice(str(index), image_root / str(item["image_path"]), captions, (x, y, w, h)))
            groups.append(group)
        except (KeyError, TypeError, ValueError) as exn:
            bad.append((str(index), f"malformed entry: {type(exn).__name__}: {exn}"))
    return choices, groups, bad


def read_order(
    root: str | os.PathLike[str], subset: str, seed: int = 1
) -> tuple[list[CaptionChoice], list[tuple[str, str]]]:
    """One choice per (image, caption): [caption, 4 perturbations]; plus malformed entries."""
    root = Path(root)
    items = _load_json(root / ORDER_FILES[subset])
    if not isinstance(items, list):
        raise ValueError(f"{root / ORDER_FILES[subset]} must hold a JSON list")
    choices, bad = [], []
    index = 0
    for n, item in enumerate(items):
        captions = item.get("caption") if isinstance(item, dict) else None
        if isinstance(captions, str):
            captions = [captions]
        if not isinstance(captions, list) or not isinstance(item.get("image"), str):
            bad.append((str(n), "malformed entry: needs 'image' (str) and 'caption' (list of str)"))
            continue
        for caption in captions:
            options = order_options(str(caption), index, seed)
            choices.append(CaptionChoice(f"{n}:{index}", root / item["image"], options))
            index += 1
    return choices, bad


def present_subsets(root: str | os.PathLike[str]) -> list[str]:
    """The subsets whose published file is in ``root``, in :data:`SUBSETS` order."""
    files = {**VG_FILES, **ORDER_FILES}
    return [subset for subset in SUBSETS if (Path(root) / files[subset]).is_file()]


def is_aro_folder(path: Path) -> bool:
    return bool(present_subsets(path))


class AroSet(NamedTuple):
    """One ARO subset read: its choices (as a :class:`ChoiceSet`), their group names (VG
    subsets) and its malformed entries."""

    subset: str
    choices: ChoiceSet
    groups: list[str]
    bad: list[tuple[str, str]]


def open_aro(root: str | os.PathLike[str], subset: str, exclude: Iterable[str] = (), seed: int = 1) -> AroSet:
    """Read one subset (``vg_relation``, ``vg_attribution``, ``coco_order``, ``flickr30k_order``);
    ``exclude`` drops VG relations or attribute pairs."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown ARO subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    files = {**VG_FILES, **ORDER_FILES}
    if subset in VG_FILES:
        choices, groups, bad = read_vg(root, subset)
        excluded = set(exclude)
        keep = [i for i, g in enumerate(groups) if g not in excluded]
        choices, groups = [choices[i] for i in keep], [groups[i] for i in keep]
    else:
        (choices, bad), groups = read_order(root, subset, seed), []
    return AroSet(subset, ChoiceSet(f"aro_{subset}", root, choices, [Path(root) / files[subset]]), groups, bad)


def _vg_result(subset: str, scores: list[torch.Tensor | None], groups: list[str],
               symmetric_filter: bool) -> dict[str, Any]:
    ok = [i for i, s in enumerate(scores) if s is not None]
    pairs = torch.stack([scores[i] for i in ok]) if ok else torch.zeros(0, 2)  # type: ignore[misc]
    kept_groups = [groups[i] for i in ok]
    metrics = aro_vg_metrics(pairs[:, 0], pairs[:, 1], kept_groups)
    result: dict[str, Any] = {
        "metrics": {"macro_accuracy": metrics["macro_accuracy"], "micro_accuracy": metrics["micro_accuracy"]}}
    if subset == "vg_relation":
        per_group: dict[str, float] = metrics["per_group"]  # type: ignore[assignment]
        dropped = sorted(g for g in per_group if g in SYMMETRIC_RELATIONS) if symmetric_filter else []
        headline = [acc for g, acc in per_group.items() if g not in dropped]
        result["metrics"] = {
            "macro_accuracy": sum(headline) / len(headline) if headline else float("nan"),
            "macro_accuracy_all_relations": metrics["macro_accuracy"],
            "micro_accuracy": metrics["micro_accuracy"],
        }
        result["symmetric_relations_left_out"] = dropped
    result["per_group"] = metrics["per_group"]
    result["count_per_group"] = dict(sorted(Counter(kept_groups).items()))
    return result


def _order_metrics(scores: list[torch.Tensor | None]) -> dict[str, float]:
    ok = [s for s in scores if s is not None]
    options = torch.stack(ok) if ok else torch.zeros(0, 1 + len(PERTURBATIONS))
    metrics: dict[str, float] = {"accuracy": best_of_options(options).double().mean().item() if ok else float("nan")}
    for j, name in enumerate(PERTURBATIONS, start=1):
        beats = options[:, 0].double() > options[:, j].double()
        metrics[f"acc_{name}"] = beats.double().mean().item() if ok else float("nan")
    return metrics


def score_aro(encoder: Encoder, aro: AroSet, symmetric_filter: bool = True) -> dict[str, Any]:
    """Score one read subset through ``encoder``; the result dict.

    Keys: dataset, model, task, metrics, num_samples, skipped; VG subsets add per_group
    {name: accuracy} and count_per_group, Order subsets add nothing else. Metrics: VG gives
    macro_accuracy (ARO's number) and micro_accuracy; Order gives accuracy and acc_<perturbation>
    (the caption beats that one perturbation).
    """
    result: dict[str, Any] = {"dataset": f"aro_{aro.subset}", "model": encoder.source.name, "task": RESULT_TASK}
    scores, unreadable = score_choices(encoder, aro.choices, f"aro {aro.subset}")
    if aro.subset in VG_FILES:
        result.update(_vg_result(aro.subset, scores, aro.groups, symmetric_filter))
    else:
        result["metrics"] = _order_metrics(scores)
    result["num_samples"] = len(aro.choices.choices) - len(unreadable)
    result["skipped"] = len(aro.bad) + len(unreadable)
    return result


def evaluate_aro(
    loaded: EvalModel,
    dataset_dir: str | os.PathLike[str],
    subset: str,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = True,
    exclude: Iterable[str] = (),
    seed: int = 1,
    symmetric_filter: bool = True,
) -> dict[str, Any]:
    """One ARO subset on a model in memory (no cache, one process); see :func:`score_aro`."""
    aro = open_aro(dataset_dir, subset, exclude, seed)
    return score_aro(Encoder.for_loaded(loaded, batch_size, device, progress=progress), aro, symmetric_filter)
