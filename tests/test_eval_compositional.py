"""Published-format compositionality benchmarks: metrics on hand-built scores, loaders on tiny fixtures."""

from __future__ import annotations

import json
import math
import random
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from eval.benchmarks.aro import evaluate_aro, read_order, read_vg
from eval.benchmarks.aro_perturb import (
    PERTURBATIONS,
    is_adjective,
    is_noun,
    order_options,
    pre_caption,
    shuffle_all_but_nouns_and_adjectives,
    shuffle_nouns_and_adjectives,
    shuffle_trigrams,
    shuffle_within_trigrams,
    tokenize,
    trigrams,
)
from eval.benchmarks.choices import open_rgb
from eval.benchmarks.metrics import (
    aro_vg_metrics,
    best_of_options,
    grouped_accuracy,
    strict_pair_accuracy,
    winoground_scores,
)
from eval.benchmarks.sugarcrepe import evaluate_sugarcrepe, read_subset
from eval.benchmarks.winoground import evaluate_winoground
from tests.test_eval_datasets import BLUE, GREEN, RED, FakeCLIP, FakeLoaded, fake_tokenize, fake_transform


def fake_loaded() -> FakeLoaded:
    """The fake model of test_eval_datasets with a transform that resizes (crops differ in size)."""
    return FakeLoaded(FakeCLIP(), fake_tokenize, lambda image: fake_transform(image.resize((8, 8))), "fake-clip")


# ---------------------------------------------------------------- pure metrics


def test_winoground_text_score_without_group_score() -> None:
    # [example, caption, image]; example 0: captions pick their images but c0 prefers image 1
    scores = torch.tensor([[[0.5, 0.55], [0.4, 0.6]],   # text 1, image 0, group 0
                           [[0.9, 0.1], [0.2, 0.8]],    # all three 1
                           [[0.5, 0.5], [0.5, 0.5]]])   # ties: all 0
    m = winoground_scores(scores)
    assert m == pytest.approx({"text_score": 2 / 3, "image_score": 1 / 3, "group_score": 1 / 3})
    only_text = winoground_scores(scores[:1])
    assert (only_text["text_score"], only_text["image_score"], only_text["group_score"]) == (1.0, 0.0, 0.0)
    assert all(math.isnan(v) for v in winoground_scores(torch.zeros(0, 2, 2)).values())
    with pytest.raises(ValueError, match="2, 2"):
        winoground_scores(torch.zeros(3, 2))


def test_sugarcrepe_tie_is_a_miss() -> None:
    assert strict_pair_accuracy(torch.tensor([1.0, 0.5, 0.3]), torch.tensor([0.5, 0.5, 0.4])) == pytest.approx(1 / 3)
    assert math.isnan(strict_pair_accuracy(torch.zeros(0), torch.zeros(0)))
    with pytest.raises(ValueError):
        strict_pair_accuracy(torch.zeros(2), torch.zeros(3))


def test_aro_macro_differs_from_micro() -> None:
    true = torch.tensor([0.9, 0.8, 0.7, 0.1, 0.5])
    false = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.5])  # last one ties: a miss
    m = aro_vg_metrics(true, false, ["on", "on", "on", "under", "under"])
    assert m["per_group"] == {"on": 1.0, "under": 0.0}
    assert m["macro_accuracy"] == pytest.approx(0.5) and m["micro_accuracy"] == pytest.approx(0.6)
    macro, micro, groups = grouped_accuracy(torch.tensor([1, 0, 0, 0]), ["a", "b", "b", "b"])
    assert (macro, micro, groups) == (pytest.approx(0.5), pytest.approx(0.25), {"a": 1.0, "b": 0.0})


def test_best_of_options_is_strict() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.2, 0.3, 0.8], [0.5, 0.5, 0.1, 0.1, 0.1], [0.1, 0.2, 0.0, 0.0, 0.0]])
    assert best_of_options(scores).tolist() == [True, False, False]


# ---------------------------------------------------------------- ARO perturbations

CAPTION = "A small brown dog is sitting on a wooden bench next to the old man."


def test_lexical_tagging() -> None:
    tokens = tokenize(CAPTION)
    assert [t for t in tokens if is_noun(t)] == ["dog", "bench", "man"]
    assert [t for t in tokens if is_adjective(t)] == ["small", "brown", "wooden", "old"]


def test_perturbations_keep_words_and_structure() -> None:
    tokens = tokenize(CAPTION)
    for name, perturb in PERTURBATIONS.items():
        out = perturb(CAPTION, random.Random(3)).split(" ")
        assert Counter(out) == Counter(tokens), name
    fixed = shuffle_all_but_nouns_and_adjectives(CAPTION, random.Random(5)).split(" ")
    keep = [i for i, t in enumerate(tokens) if is_noun(t) or is_adjective(t)]
    assert [fixed[i] for i in keep] == [tokens[i] for i in keep]
    nouns = shuffle_nouns_and_adjectives(CAPTION, random.Random(5)).split(" ")
    other = [i for i in range(len(tokens)) if i not in keep]
    assert [nouns[i] for i in other] == [tokens[i] for i in other]
    within = shuffle_within_trigrams(CAPTION, random.Random(5)).split(" ")
    assert [sorted(g) for g in trigrams(within)] == [sorted(g) for g in trigrams(tokens)]
    across = f" {shuffle_trigrams(CAPTION, random.Random(5))} "
    assert all(f" {' '.join(g)} " in across for g in trigrams(tokens))  # every trigram stays contiguous
    assert across.strip() != " ".join(tokens)
    assert trigrams(list("abcdefg")) == [["a", "b", "c"], ["d", "e", "f"], ["g"]]


def test_order_options_are_seeded_and_cleaned() -> None:
    options = order_options(CAPTION, index=7, seed=1)
    assert len(options) == 5 and options[0] == pre_caption(CAPTION)
    assert options[0] == "a small brown dog is sitting on a wooden bench next to the old man"
    assert options == order_options(CAPTION, index=7, seed=1)
    assert options != order_options(CAPTION, index=7, seed=2)
    assert all("." not in o for o in options)
    assert pre_caption("One  two. Three!", max_words=2) == "one two"


# ---------------------------------------------------------------- fixtures in the published formats


def save(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def make_aro_vg(root: Path) -> Path:
    images = root / "images"
    two = Image.new("RGB", (20, 10), RED)
    two.paste(BLUE, (10, 0, 20, 10))  # whole image reads red (mean R 125 > B 110); right half is blue
    images.mkdir(parents=True)
    two.save(images / "two.png")
    save(images / "red.png", RED)
    save(images / "green.png", GREEN)

    def entry(image: str, box: tuple[int, int, int, int], true: str, false: str, **extra: object) -> dict:
        x, y, w, h = box
        return {"image_path": image, "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h,
                "true_caption": true, "false_caption": false, **extra}

    relation = [
        entry("two.png", (10, 0, 10, 10), "the blue cup is on the table", "the red cup is on the table",
              relation_name="on"),  # right only after the crop
        entry("red.png", (0, 0, 8, 8), "a red cup on a table", "a green cup on a table", relation_name="on"),
        entry("red.png", (2, 2, 4, 4), "the red box is on the mat", "the mat is on the blue box", relation_name="on"),
        entry("green.png", (0, 0, 8, 8), "a red dog under a tree", "a green dog under a tree", relation_name="under"),
        entry("red.png", (0, 0, 8, 8), "a blue cat under a car", "a green cat under a car",
              relation_name="under"),  # tie (both 0): a miss
        {"image_path": "red.png", "true_caption": "x", "false_caption": "y", "relation_name": "on"},  # no bbox
        entry("missing.png", (0, 0, 8, 8), "a red x", "a blue x", relation_name="on"),  # unreadable
    ]
    attribution = [
        entry("two.png", (0, 0, 10, 10), "the red cup and the blue plate", "the blue cup and the red plate",
              attributes=["red", "blue"]),
        entry("green.png", (0, 0, 8, 8), "the red cup and the green plate", "the green cup and the red plate",
              attributes=["red", "green"]),
    ]
    (root / "visual_genome_relation.json").write_text(json.dumps(relation))
    (root / "visual_genome_attribution.json").write_text(json.dumps(attribution))
    return root


def test_aro_vg_reader_crops_as_published(tmp_path: Path) -> None:
    root = make_aro_vg(tmp_path / "aro")
    choices, groups, bad = read_vg(root, "vg_relation")
    assert groups == ["on", "on", "on", "under", "under", "on"]
    assert [b[0] for b in bad] == ["5"]
    crop = open_rgb(choices[0].image_path, choices[0].box)
    assert crop.size == (10, 10) and crop.getpixel((0, 0)) == BLUE
    assert choices[0].captions == ["the blue cup is on the table", "the red cup is on the table"]


def test_aro_vg_end_to_end(tmp_path: Path) -> None:
    root = make_aro_vg(tmp_path / "aro")
    result = evaluate_aro(fake_loaded(), root, "vg_relation", batch_size=2, progress=False)
    assert result["metrics"] == pytest.approx({"macro_accuracy": 0.5, "macro_accuracy_all_relations": 0.5,
                                               "micro_accuracy": 0.6})
    assert result["symmetric_relations_left_out"] == []
    assert result["per_group"] == {"on": 1.0, "under": 0.0}
    assert result["count_per_group"] == {"on": 3, "under": 2}
    assert (result["num_samples"], result["skipped"], result["dataset"]) == (5, 2, "aro_vg_relation")
    excluded = evaluate_aro(fake_loaded(), root, "vg_relation", exclude=["under"], progress=False)
    assert excluded["metrics"]["macro_accuracy"] == 1.0 and excluded["num_samples"] == 3
    attr = evaluate_aro(fake_loaded(), root, "vg_attribution", progress=False)
    assert attr["per_group"] == {"red_blue": 1.0, "red_green": 0.0}
    assert attr["metrics"] == pytest.approx({"macro_accuracy": 0.5, "micro_accuracy": 0.5})
    with pytest.raises(ValueError, match="unknown ARO subset"):
        evaluate_aro(fake_loaded(), root, "vg_everything", progress=False)
    with pytest.raises(FileNotFoundError, match="coco_karpathy_test.json"):
        evaluate_aro(fake_loaded(), root, "coco_order", progress=False)


def test_aro_vg_relation_headline_leaves_out_symmetric_relations(tmp_path: Path) -> None:
    root = make_aro_vg(tmp_path / "aro")
    items = json.loads((root / "visual_genome_relation.json").read_text())
    for item in items:
        if item.get("relation_name") == "under":
            item["relation_name"] = "next to"  # in the published symmetric list
    (root / "visual_genome_relation.json").write_text(json.dumps(items))
    result = evaluate_aro(fake_loaded(), root, "vg_relation", progress=False)
    assert result["per_group"] == {"on": 1.0, "next to": 0.0}
    assert result["metrics"] == pytest.approx({"macro_accuracy": 1.0, "macro_accuracy_all_relations": 0.5,
                                               "micro_accuracy": 0.6})
    assert result["symmetric_relations_left_out"] == ["next to"]
    kept = evaluate_aro(fake_loaded(), root, "vg_relation", progress=False, symmetric_filter=False)
    assert kept["metrics"]["macro_accuracy"] == pytest.approx(0.5) and kept["symmetric_relations_left_out"] == []


def test_aro_order_end_to_end(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    save(root / "val2014" / "a.png", RED)
    captions = ["A red dog near a green cat.", "the red car", "A green bird on a red branch by a blue lake"]
    annotations = [{"image": "val2014/a.png", "caption": captions}, {"image": "val2014/none.png", "caption": ["x"]},
                   {"caption": ["no image field"]}]
    (root / "coco_karpathy_test.json").write_text(json.dumps(annotations))
    choices, bad = read_order(root, "coco_order")
    assert len(choices) == 4 and len(bad) == 1
    assert [c.captions for c in choices[:3]] == [order_options(c, i) for i, c in enumerate(captions)]
    # order-aware fake text tower: "red" when a text starts with a true caption's first three words, else "blue"
    prefixes = tuple(" ".join(pre_caption(c).split()[:3]) for c in captions)

    def tokenize(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[0 if t.startswith(prefixes) else 2] for t in texts])

    loaded = fake_loaded()
    loaded.tokenizer = tokenize
    result = evaluate_aro(loaded, root, "coco_order", progress=False)
    # seed 1: caption 0 keeps "a red dog" in its noun/adjective shuffle, caption 1 ("the red car") is
    # unchanged by every perturbation (ties), caption 2 loses its prefix under all four perturbations
    assert result["metrics"]["accuracy"] == pytest.approx(1 / 3)
    assert result["metrics"]["acc_shuffle_trigrams"] == pytest.approx(2 / 3)
    assert result["metrics"]["acc_shuffle_nouns_and_adj"] == pytest.approx(1 / 3)
    assert result["num_samples"] == 3 and result["skipped"] == 2
    assert set(result["metrics"]) == {"accuracy", *(f"acc_{p}" for p in PERTURBATIONS)}


def make_sugarcrepe(root: Path) -> Path:
    save(root / "val2017" / "000000000001.jpg", RED)
    save(root / "val2017" / "000000000002.jpg", GREEN)
    (root / "replace_att.json").write_text(json.dumps({
        "0": {"filename": "000000000001.jpg", "caption": "a red car", "negative_caption": "a blue car"},
        "1": {"filename": "000000000002.jpg", "caption": "a green bird", "negative_caption": "a teal bird"},
        "2": {"filename": "000000000001.jpg", "caption": "a blue car", "negative_caption": "a green car"},  # tie
    }))
    (root / "swap_obj.json").write_text(json.dumps({
        "7": {"filename": "000000000002.jpg", "caption": "green grass and a red kite",
              "negative_caption": "red grass and a green kite"},
        "8": {"filename": "000000000099.jpg", "caption": "a red x", "negative_caption": "a blue x"},  # no file
        "9": {"filename": "000000000001.jpg", "caption": "a red x"},  # no negative
    }))
    return root


def test_sugarcrepe_end_to_end(tmp_path: Path) -> None:
    root = make_sugarcrepe(tmp_path / "sugarcrepe")
    choices, bad = read_subset(root, "swap_obj", root / "val2017")
    assert [c.key for c in choices] == ["swap_obj/7", "swap_obj/8"] and [b[0] for b in bad] == ["9"]
    result = evaluate_sugarcrepe(fake_loaded(), root, ["replace_att", "swap_obj"], batch_size=2, progress=False)
    m = result["metrics"]
    assert m["acc_replace_att"] == pytest.approx(2 / 3) and m["acc_swap_obj"] == 1.0
    assert m["acc"] == pytest.approx(5 / 6)
    assert m["acc_replace"] == pytest.approx(2 / 3) and m["acc_swap"] == 1.0 and "acc_add" not in m
    assert result["count_per_subset"] == {"replace_att": 3, "swap_obj": 1}
    assert (result["num_samples"], result["skipped"]) == (4, 2)
    with pytest.raises(FileNotFoundError, match="add_obj.json"):
        evaluate_sugarcrepe(fake_loaded(), root, ["add_obj"], progress=False)
    with pytest.raises(FileNotFoundError, match="image folder"):
        evaluate_sugarcrepe(fake_loaded(), root, ["replace_att"], image_root=root / "nowhere", progress=False)
    with pytest.raises(ValueError, match="unknown SugarCrepe subset"):
        evaluate_sugarcrepe(fake_loaded(), root, ["replace_color"], progress=False)


def make_winoground(root: Path) -> Path:
    images = root / "images"
    save(images / "ex_0_img_0.png", RED)
    save(images / "ex_0_img_1.png", BLUE)
    save(images / "ex_1_img_0.png", GREEN)
    save(images / "ex_1_img_1.png", BLUE)
    save(images / "ex_2_img_0.png", RED)  # ex_2_img_1 missing
    lines = [
        {"id": 0, "image_0": "ex_0_img_0", "image_1": "ex_0_img_1",
         "caption_0": "a red thing", "caption_1": "a blue thing"},
        # teal vs green image 0.28, vs blue 0.96: text score 1, image score 0
        {"id": 1, "image_0": "ex_1_img_0", "image_1": "ex_1_img_1", "caption_0": "a teal x", "caption_1": "a blue x"},
        {"id": 2, "image_0": "ex_2_img_0", "image_1": "ex_2_img_1", "caption_0": "a red x", "caption_1": "a blue x"},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + '\n{"id": 3, "image_0": "x"}\nnot json\n'
    (root / "examples.jsonl").write_text(text)
    return root


def test_winoground_end_to_end(tmp_path: Path) -> None:
    result = evaluate_winoground(fake_loaded(), make_winoground(tmp_path / "wino"), batch_size=3, progress=False)
    assert result["metrics"] == pytest.approx({"text_score": 1.0, "image_score": 0.5, "group_score": 0.5})
    assert (result["num_samples"], result["skipped"], result["task"]) == (2, 3, "winoground")
    with pytest.raises(FileNotFoundError, match="examples.jsonl"):
        evaluate_winoground(fake_loaded(), tmp_path)


def test_cli_runs_published_format_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eval.__main__ import main

    def load_eval_model(path: str, device: str = "cpu", model_config: str | None = None,
                        allow_mismatch: bool = False) -> FakeLoaded:
        return fake_loaded()

    monkeypatch.setitem(sys.modules, "vlp.interop.load", types.SimpleNamespace(load_eval_model=load_eval_model))
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"")
    aro = make_aro_vg(tmp_path / "aro")
    out = tmp_path / "out"
    assert main(["aro", "--model", str(ckpt), "--dataset", str(aro), "--subset", "vg_relation",
                 "--output", str(out / "aro.json"), "--no-progress"]) == 0
    assert json.loads((out / "aro.json").read_text())["metrics"]["macro_accuracy"] == pytest.approx(0.5)
    sugar = make_sugarcrepe(tmp_path / "sc")
    assert main(["sugarcrepe", "--model", str(ckpt), "--dataset", str(sugar), "--subset", "replace_att",
                 "--output", str(out / "sc.json"), "--no-progress"]) == 0
    assert json.loads((out / "sc.json").read_text())["metrics"]["acc"] == pytest.approx(2 / 3)
    assert main(["sugarcrepe", "--model", str(ckpt), "--dataset", str(sugar), "--subset", "replace_color",
                 "--output", str(out / "bad.json")]) == 2
    wino = make_winoground(tmp_path / "wino")
    assert main(["winoground", "--model", str(ckpt), "--dataset", str(wino), "--output", str(out / "w.json"),
                 "--no-progress"]) == 0
    assert json.loads((out / "w.json").read_text())["metrics"]["group_score"] == pytest.approx(0.5)
