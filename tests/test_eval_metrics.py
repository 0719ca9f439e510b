"""Eval metrics on hand-built score matrices with answers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from eval.metrics import (
    build_classifier,
    caption_selection,
    hit_at_k,
    mean_per_class_recall,
    per_class_recall,
    positive_pairs,
    retrieval_recall,
    topk_accuracy,
    zeroshot_logits,
    zeroshot_metrics,
)
from eval.tasks.zeroshot import class_prompts, zeroshot_classifier


# ---------------------------------------------------------------- zero-shot classification


def test_acc1_acc5_and_balanced_accuracy_by_hand() -> None:
    # 6 classes, distinct values per row (no ties). Row ranks worked out by hand:
    logits = torch.tensor(
        [
            [6.0, 5, 4, 3, 2, 1],  # target 0: rank 1            -> top1 hit, top5 hit
            [6.0, 5, 4, 3, 2, 1],  # target 5: rank 6            -> top1 miss, top5 miss
            [1.0, 2, 3, 4, 5, 6],  # target 1: rank 5            -> top1 miss, top5 hit
            [0.0, 9, 1, 2, 3, 4],  # target 1: rank 1            -> top1 hit, top5 hit
        ]
    )
    targets = torch.tensor([0, 5, 1, 1])
    m = zeroshot_metrics(logits, targets)
    assert m["acc1"] == pytest.approx(2 / 4)
    assert m["acc5"] == pytest.approx(3 / 4)
    # argmax preds 0,0,5,1: recall class0 = 1/1, class1 = 1/2, class5 = 0/1; classes 2,3,4 absent
    assert m["mean_per_class_recall"] == pytest.approx((1 + 0.5 + 0) / 3)
    recall = per_class_recall(logits.argmax(1), targets, 6)
    assert recall[[0, 1, 5]].tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert torch.isnan(recall[[2, 3, 4]]).all()
    assert topk_accuracy(logits, targets, (1, 2, 5, 6)) == pytest.approx([0.5, 0.5, 0.75, 1.0])


def test_unbalanced_classes_acc1_differs_from_mean_per_class_recall() -> None:
    # 4 samples of class 0 (all right), 1 of class 1 (wrong), 1 of class 2 (right).
    logits = torch.tensor(
        [[3.0, 1, 0], [3.0, 1, 0], [3.0, 0, 1], [2.0, 1, 0], [2.0, 1, 0], [0.0, 1, 2]]
    )
    targets = torch.tensor([0, 0, 0, 0, 1, 2])
    m = zeroshot_metrics(logits, targets)
    assert m["acc1"] == pytest.approx(5 / 6)
    assert m["mean_per_class_recall"] == pytest.approx((1 + 0 + 1) / 3)
    assert m["acc1"] != pytest.approx(m["mean_per_class_recall"])


def test_fewer_than_five_classes_gives_nan_acc5() -> None:
    m = zeroshot_metrics(torch.tensor([[1.0, 0, 0, 0]]), torch.tensor([0]))
    assert m["acc1"] == 1.0
    assert math.isnan(m["acc5"])


def test_mean_per_class_recall_tie_goes_to_first_class() -> None:
    # argmax returns the first maximal index: a tie between classes 0 and 1 predicts class 0.
    logits = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert mean_per_class_recall(logits.argmax(1), torch.tensor([0, 0]), 3) == 1.0
    assert mean_per_class_recall(logits.argmax(1), torch.tensor([1, 1]), 3) == 0.0


def test_targets_outside_classes_raise() -> None:
    with pytest.raises(ValueError, match="targets"):
        per_class_recall(torch.tensor([0]), torch.tensor([3]), 3)


def test_classifier_averages_normalised_templates() -> None:
    # class 0: templates [3,4,0] and [0,0,2] -> normalised [.6,.8,0] and [0,0,1]
    # mean [.3,.4,.5], norm sqrt(.5) -> [.3,.4,.5]/sqrt(.5)
    emb = torch.tensor([[[3.0, 4, 0], [0, 0, 2]], [[0.0, 5, 0], [0, 1, 0]]])
    clf = build_classifier(emb)
    s = math.sqrt(0.5)
    assert clf[0].tolist() == pytest.approx([0.3 / s, 0.4 / s, 0.5 / s])
    assert clf[1].tolist() == pytest.approx([0.0, 1.0, 0.0])
    # not the same as averaging raw (unnormalised) embeddings
    raw = torch.nn.functional.normalize(emb.mean(1), dim=-1)
    assert not torch.allclose(raw[0], clf[0])
    logits = zeroshot_logits(torch.tensor([[0.0, 0, 2]]), clf)
    assert logits[0].tolist() == pytest.approx([100 * 0.5 / s, 0.0])


class _PromptTable(torch.nn.Module):
    """Text encoder over a fixed prompt table (token = prompt index + 1: one real token each, 0
    being padding); counts encode calls."""

    def __init__(self, prompts: list[str], vectors: list[list[float]]):
        super().__init__()
        self.prompts = prompts
        self.register_buffer("table", torch.tensor(vectors))
        self.batch_sizes: list[int] = []

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[self.prompts.index(t) + 1] for t in texts])

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(tokens.shape[0])
        return self.table[tokens[:, 0] - 1]


def test_zeroshot_classifier_encodes_prompts_in_batches_and_averages() -> None:
    classnames, templates = ["cat", "dog"], ["a photo of a {c}.", "a drawing of a {c}."]
    prompts = class_prompts(classnames, templates)
    assert prompts == ["a photo of a cat.", "a drawing of a cat.", "a photo of a dog.", "a drawing of a dog."]
    model = _PromptTable(prompts, [[3, 4, 0], [0, 0, 2], [0, 1, 0], [1, 0, 0]])
    clf = zeroshot_classifier(model, model.tokenize, classnames, templates, batch_size=3)
    assert model.batch_sizes == [3, 1]  # all prompts batched together, not one call per class
    s = math.sqrt(0.5)
    assert clf[0].tolist() == pytest.approx([0.3 / s, 0.4 / s, 0.5 / s])
    assert clf[1].tolist() == pytest.approx([s, s, 0.0])


# ---------------------------------------------------------------- retrieval


def test_retrieval_two_captions_hit_through_second_caption_only() -> None:
    # 2 images, captions t0,t1 -> image 0 and t2,t3 -> image 1. scores[text, image]:
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.4], [0.7, 0.6]])
    text_to_image = torch.tensor([0, 0, 1, 1])
    m = retrieval_recall(scores, text_to_image, ks=(1, 2, 5))
    # text->image @1: t0->img1 miss, t1->img0 hit, t2->img1 hit, t3->img0 miss
    assert m["image_retrieval_recall@1"] == pytest.approx(0.5)
    # image->text @1: img0's best text is t1 (its SECOND caption) -> hit; img1's best is t0 -> miss
    assert m["text_retrieval_recall@1"] == pytest.approx(0.5)
    # @2: img1's top2 = t0 (.9), t3 (.6) -> hit through its second caption
    assert m["text_retrieval_recall@2"] == 1.0
    assert m["image_retrieval_recall@2"] == 1.0
    # k larger than the candidates is clamped (every positive retrieved)
    assert m["image_retrieval_recall@5"] == 1.0 and m["text_retrieval_recall@5"] == 1.0
    assert set(m) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 2, 5)}


def test_retrieval_all_tied_retrieves_exactly_k() -> None:
    # Every score equal: topk returns exactly k candidates (the same ones for identical rows),
    # so recall@k = k / N -- neither optimistic (1.0) nor pessimistic (0.0).
    scores = torch.zeros(4, 4)
    m = retrieval_recall(scores, torch.arange(4), ks=(1, 2, 3))
    for k in (1, 2, 3):
        assert m[f"image_retrieval_recall@{k}"] == pytest.approx(k / 4)
        assert m[f"text_retrieval_recall@{k}"] == pytest.approx(k / 4)


def test_retrieval_tie_inside_top_k_is_a_hit() -> None:
    # The positive (image 0) ties with image 1 for first place: at k=2 both are retrieved.
    scores = torch.tensor([[0.5, 0.5, 0.1]])
    hits = hit_at_k(scores, positive_pairs(torch.tensor([0]), 3), k=2)
    assert hits.tolist() == [True]
    # a positive strictly below k others is never retrieved, whatever the tie order above it
    scores = torch.tensor([[0.5, 0.5, 0.1]])
    assert hit_at_k(scores, positive_pairs(torch.tensor([2]), 3), k=2).tolist() == [False]


def test_hit_at_k_matches_rank_definition_without_ties() -> None:
    # Without ties, "positive in topk" == "fewer than k candidates score above the best positive".
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(37, 11, generator=gen)
    text_to_image = torch.randint(0, 11, (37,), generator=gen)
    pos = positive_pairs(text_to_image, 11)
    for k in (1, 3, 5, 10):
        best_pos = scores[pos].view(-1, 1)
        expected = (scores > best_pos).sum(1) < k
        assert torch.equal(hit_at_k(scores, pos, k, chunk_size=8), expected)
        # image->text: best positive per image; an image without captions is a miss
        best = torch.where(pos.T, scores.T, torch.tensor(-1.0)).max(1, keepdim=True).values
        expected_t = ((scores.T > best).sum(1) < k) & pos.T.any(1)
        assert torch.equal(hit_at_k(scores.T, pos.T, k, chunk_size=4), expected_t)


# ---------------------------------------------------------------- compositionality


def test_caption_selection_strict_with_tie_as_miss() -> None:
    positive = torch.tensor([0.9, 0.5, 0.7])
    negatives = torch.tensor([0.3, 0.95, 0.5, 0.1, 0.6])
    owner = torch.tensor([0, 0, 1, 1, 2])
    types = ["swap_attribute", "shuffle_words", "swap_attribute", "swap_relation", "swap_relation"]
    m = caption_selection(positive, negatives, owner, types)
    # s0: .95 beats .9 -> miss; s1: tie .5 vs .5 -> miss; s2: .7 > .6 -> hit
    assert m["acc"] == pytest.approx(1 / 3)
    assert m["acc_swap_attribute"] == pytest.approx(1 / 2)  # s0 (.3 < .9) hit, s1 tie miss
    assert m["acc_shuffle_words"] == 0.0  # s0 only, .95 > .9
    assert m["acc_swap_relation"] == 1.0  # s1 (.1 < .5), s2 (.6 < .7)
    assert set(m) == {"acc", "acc_swap_attribute", "acc_shuffle_words", "acc_swap_relation"}


def test_caption_selection_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        caption_selection(torch.tensor([1.0]), torch.tensor([0.0, 0.1]), torch.tensor([0, 0]), ["a"])
