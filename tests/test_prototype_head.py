"""The prototype head and the prototype objective on one process: Sinkhorn codes, the swapped
prediction against a hand computation, episodic k-means, config errors, and a run through the engine."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from test_engine_faults import SMALL
from vlp.config import load_config
from vlp.errors import ConfigError
from vlp.losses.prototype import prototype_loss, sinkhorn_codes
from vlp.models.heads import check_heads_with_terms
from vlp.models.heads.prototypes import PrototypeHead, usage_names


class StubTextTower(nn.Module):
    """The least a head needs of a text tower: ``context_length`` and embeddings of width ``width``."""

    context_length = 2

    def __init__(self, width: int) -> None:
        super().__init__()
        self.row = nn.Parameter(torch.zeros(width))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.row.expand(ids.shape[0], -1)


def make_head(width: int, **options) -> PrototypeHead:
    return PrototypeHead(nn.Identity(), StubTextTower(width), **options)


def clustered_pairs(per_cluster: int, seed: int = 0, k: int = 4, dim: int = 8, noise: float = 0.03, same: bool = False):
    """Pairs around k well-separated centres per modality: image centre j is axis j, text centre
    j is axis (j + 1) % k shifted into the other half of the space (``same``: axis j too). Returns
    (image [k*n, dim], text [k*n, dim], image centres [k, dim], text centres [k, dim])."""
    g = torch.Generator().manual_seed(seed)
    eye = torch.eye(dim, dtype=torch.float64)
    image_centres = eye[:k]
    text_centres = image_centres if same else eye[[k + (j + 1) % k for j in range(k)]]
    labels = torch.arange(k).repeat_interleave(per_cluster)
    labels = labels[torch.randperm(len(labels), generator=g)]
    image = F.normalize(image_centres[labels] + noise * torch.randn(len(labels), dim, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(text_centres[labels] + noise * torch.randn(len(labels), dim, generator=g, dtype=torch.float64), dim=-1)
    return image, text, image_centres, text_centres


def assert_prototypes_at_centres(head: PrototypeHead, image_centres: torch.Tensor, text_centres: torch.Tensor) -> None:
    """Each image prototype sits on one image centre (all centres covered) and the text prototype
    of the same index on the text centre of the same cluster."""
    image_cos = head.prototype_matrix("image").detach().double() @ image_centres.T
    text_cos = head.prototype_matrix("text").detach().double() @ text_centres.T
    match = image_cos.argmax(dim=1)
    assert sorted(match.tolist()) == list(range(len(image_centres)))
    assert image_cos.max(dim=1).values.min() > 0.99
    assert text_cos[torch.arange(len(match)), match].min() > 0.99


def test_sinkhorn_codes_are_an_equal_partition_of_a_skewed_batch():
    batch, k = 256, 32
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(batch, k, generator=g) * 0.05 + torch.linspace(0.2, 0.0, k)  # prototype 0 favoured
    greedy = torch.softmax(scores / 0.05, dim=1).sum(dim=0) / (batch / k)
    assert greedy.max() > 3 and greedy.min() < 0.1  # the plain softmax is far from an equal partition
    codes = sinkhorn_codes(scores)  # the defaults: 3 iterations, epsilon 0.05
    assert codes.shape == (batch, k) and (codes >= 0).all()
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(batch), atol=1e-5, rtol=0)
    assert ((codes.sum(dim=0) / (batch / k) - 1).abs() < 0.01).all()


def test_swapped_prediction_equals_a_hand_computation():
    # symmetric 2 x 2 scores: exp(S / eps) is already balanced, so the codes are softmax(S / eps) rows
    a, b, c, d, eps, temp = 0.9, 0.2, 0.6, 0.5, 0.05, 0.1
    image = torch.tensor([[a, b], [b, a]], dtype=torch.float64)
    text = torch.tensor([[c, d], [d, c]], dtype=torch.float64)

    def sigmoid(x):
        return 1 / (1 + math.exp(-x))

    q_image, q_text = sigmoid((a - b) / eps), sigmoid((c - d) / eps)
    codes = sinkhorn_codes(image, epsilon=eps)
    torch.testing.assert_close(codes, torch.tensor([[q_image, 1 - q_image], [1 - q_image, q_image]], dtype=torch.float64))
    image_to_text = -(q_text * math.log(sigmoid((a - b) / temp)) + (1 - q_text) * math.log(sigmoid((b - a) / temp)))
    text_to_image = -(q_image * math.log(sigmoid((c - d) / temp)) + (1 - q_image) * math.log(sigmoid((d - c) / temp)))
    loss = prototype_loss(image, text, temperature=temp, epsilon=eps)
    assert loss.item() == pytest.approx((image_to_text + text_to_image) / 2, rel=1e-9)
    # the within-modality term without second views: each modality predicts its own codes
    within = prototype_loss(image, text, temperature=temp, epsilon=eps, within_weight=0.5)
    own_image = -(q_image * math.log(sigmoid((a - b) / temp)) + (1 - q_image) * math.log(sigmoid((b - a) / temp)))
    own_text = -(q_text * math.log(sigmoid((c - d) / temp)) + (1 - q_text) * math.log(sigmoid((d - c) / temp)))
    assert within.item() == pytest.approx(loss.item() + 0.5 * (own_image + own_text) / 2, rel=1e-9)


def test_back_translation_scores_each_side_against_the_other_sides_centroids():
    image, text, _, _ = clustered_pairs(4, k=2, dim=4)
    scores_i, scores_t = image[:, :2], text[:, 2:]  # hand scores: cosines to the two axes of each side
    codes_i, codes_t = sinkhorn_codes(scores_i), sinkhorn_codes(scores_t)
    image_side = F.normalize(codes_t.T @ image, dim=-1)  # image-space centroids of the text clusters
    text_side = F.normalize(codes_i.T @ text, dim=-1)
    want = -(codes_t * F.log_softmax(image @ image_side.T / 0.1, dim=1)).sum(1).mean() / 2 \
        - (codes_i * F.log_softmax(text @ text_side.T / 0.1, dim=1)).sum(1).mean() / 2
    got = prototype_loss(scores_i, scores_t, back_translation=True, image_emb=image, text_emb=text)
    assert got.item() == pytest.approx(want.item(), rel=1e-9)
    assert got.item() != pytest.approx(prototype_loss(scores_i, scores_t).item(), rel=1e-3)


def test_head_scores_are_cosines_to_unit_norm_prototypes_and_usage_counts_argmax():
    torch.manual_seed(0)
    head = make_head(6, num_prototypes=5, projection_dim=3)
    emb = F.normalize(torch.randn(7, 6), dim=-1)
    out = head({}, {"image_emb": emb, "text_emb": emb.flip(0), "image_emb_aug": emb})
    assert set(out) == {"proto_image_emb", "proto_text_emb", "proto_image_scores", "proto_text_scores",
                        "proto_image_aug_scores"}
    protos = F.normalize(head.prototypes["image"], dim=-1)
    torch.testing.assert_close(out["proto_image_scores"], F.normalize(head.projections["image"](emb), dim=-1) @ protos.T)
    assert out["proto_image_scores"].abs().max() <= 1 + 1e-6
    hand = {"proto_image_scores": torch.eye(5)[[0, 0, 1, 1, 2, 3]], "proto_text_scores": torch.eye(5)[[4] * 6]}
    metrics = head.step_metrics(hand)
    assert metrics["image_unused"].item() == 1 and metrics["text_unused"].item() == 4
    shares = torch.tensor([2, 2, 1, 1]) / 6
    assert metrics["image_usage_entropy"].item() == pytest.approx(-(shares * shares.log()).sum().item(), rel=1e-6)
    assert metrics["text_usage_entropy"].item() == pytest.approx(0.0, abs=1e-9)
    with torch.no_grad():
        head.prototypes["image"].mul_(3.0)
    head.after_step()  # renormalised in place
    torch.testing.assert_close(head.prototypes["image"].norm(dim=1), torch.ones(5))


@pytest.mark.parametrize("shared", [False, True])
def test_kmeans_episode_puts_the_prototypes_at_the_cluster_centres(shared):
    # shared: one set of prototypes, so both modalities of a cluster share its centre
    image, text, image_centres, text_centres = clustered_pairs(16, same=shared)
    torch.manual_seed(0)
    head = make_head(8, num_prototypes=4, shared=shared, kmeans_episode=48, kmeans_niter=10,
                     kmeans_nredo=5).double()
    head.train()
    for start in range(0, 64, 16):
        head({}, {"image_emb": image[start:start + 16], "text_emb": text[start:start + 16]})
        head.after_step()
        assert int(head.kmeans_episodes) == (1 if start >= 32 else 0)  # the episode is full after 48 pairs
    assert_prototypes_at_centres(head, image_centres, text_centres)


def test_config_errors_name_what_to_set():
    with pytest.raises(ConfigError, match=r"model.heads.prototypes: unknown option\(s\) \['prototypes'\]; valid options: num_prototypes"):
        load_config("configs/tiny.yaml", ["model.heads={prototypes: {prototypes: 8}}"])
    with pytest.raises(ConfigError, match=r"model.heads.prototypes.num_prototypes: needs at least 2 prototypes, got 1"):
        load_config("configs/tiny.yaml", ["model.heads={prototypes: {num_prototypes: 1}}"])
    with pytest.raises(ConfigError, match=r"model.heads.prototypes.kmeans_episode: 0 \(off\) or at least num_prototypes=8"):
        load_config("configs/tiny.yaml", ["model.heads={prototypes: {num_prototypes: 8, kmeans_episode: 4}}"])
    terms = "loss.terms=[{name: clip}, {name: prototype, options: {back_translation: true}}]"
    with pytest.raises(ConfigError, match=r"loss.terms\[1\] \(prototype\) needs model.heads.prototypes "
                                          r"\(a head that provides proto_image_scores\)") as err:
        load_config("configs/tiny.yaml", [terms])
    assert "proto_image_emb" in str(err.value)  # back_translation also reads the prototype-space embeddings
    with pytest.raises(ConfigError, match=r"loss.terms\[0\].options.temp: 'prototype' takes no option 'temp'"):
        load_config("configs/tiny.yaml", ["loss.terms=[{name: prototype, options: {temp: 0.1}}]",
                                          "model.heads={prototypes: {}}"])


def test_a_head_parameter_no_term_trains_stops_training(tmp_path):
    """Data-parallel training refuses a parameter without gradient: back translation without the
    within-modality term trains no prototype, and a head no term reads trains nothing. Training
    stops before any work; the config itself still loads (a saved run stays evaluable)."""
    from vlp.train import engine

    bt = "loss.terms=[{name: clip}, {name: prototype, options: {back_translation: true}}]"
    heads = "model.heads={prototypes: {num_prototypes: 8, kmeans_episode: 16}}"
    run = [f"train.output_dir={tmp_path}", "train.run_name=refused"]
    with pytest.raises(ConfigError, match=r"model.heads.prototypes.learn_prototypes: loss.terms\[1\] \(prototype\) has "
                                          r"back_translation=true and within_weight=0.*learn_prototypes=false"):
        engine.train(load_config("configs/tiny.yaml", [bt, heads, *run]))
    with pytest.raises(ConfigError, match=r"model.heads.prototypes: no loss term reads the head's outputs"):
        engine.train(load_config("configs/tiny.yaml", [heads, *run]))
    assert not (tmp_path / "refused").exists()  # refused before the run directory is made
    with pytest.raises(ConfigError, match=r"model.heads.prototypes.learn_prototypes: false with kmeans_episode=0"):
        load_config("configs/tiny.yaml", [bt, "model.heads={prototypes: {learn_prototypes: false}}"])
    fixed = load_config("configs/tiny.yaml", [bt, "model.heads={prototypes: {num_prototypes: 8, kmeans_episode: 16, "
                                                  "learn_prototypes: false}}"])
    within = load_config("configs/tiny.yaml", [bt.replace("true}", "true, within_weight: 0.5}"), heads])
    for cfg in (fixed, within):  # nothing untrained
        check_heads_with_terms(cfg.model.heads, cfg.loss.terms)
    head = PrototypeHead(nn.Identity(), StubTextTower(4), **fixed.model.heads["prototypes"])
    assert not any(p.requires_grad for p in head.prototypes.values())


def test_training_with_the_prototype_term_logs_loss_and_usage(shapes_dir, tmp_path):
    from vlp.train import engine

    terms = "loss.terms=[{name: clip}, {name: prototype, weight: 0.5, options: {within_weight: 0.5}}]"
    cfg = load_config("configs/tiny.yaml", [f"data.train_shards={shapes_dir}/train", f"train.output_dir={tmp_path}",
                                            "train.run_name=proto", *SMALL, "train.steps=4", terms,
                                            "model.heads={prototypes: {num_prototypes: 8, kmeans_episode: 16}}"])
    run = engine.train(cfg)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for record in records:
        assert record["loss/prototype"] > 0
        assert record["loss/total"] == pytest.approx(record["loss/clip"] + 0.5 * record["loss/prototype"], rel=1e-5)
        for key in usage_names():
            assert key in record, key
        for m in ("image", "text"):
            unused = record[f"head/prototypes/{m}_unused"]
            assert isinstance(unused, int) and 0 <= unused <= 7  # 8 samples: at least one prototype used
            # the argmax histogram spreads over the 8 - unused prototypes in use
            assert 0 <= record[f"head/prototypes/{m}_usage_entropy"] <= math.log(8 - unused) + 1e-6
    final = torch.load(run / "checkpoints" / "final.pt", weights_only=True)["model"]
    assert int(final["heads.prototypes.kmeans_episodes"]) == 2  # 8 pairs a step: episodes end at steps 2 and 4
    torch.testing.assert_close(final["heads.prototypes.prototypes.image"].norm(dim=1), torch.ones(8))


def test_a_partly_filled_episode_survives_a_resume_and_completes_to_the_same_prototypes():
    image, text = (t.float() for t in clustered_pairs(per_cluster=6)[:2])
    whole, parted = (make_head(8, num_prototypes=4, kmeans_episode=24) for _ in range(2))
    parted.load_state_dict(whole.state_dict())
    for head in (whole, parted):
        head.episode.add(image[:10], text[:10])
    saved = parted.rank_state()
    assert torch.equal(saved["image"], image[:10]) and parted.episode.count == 10  # reading it keeps the episode
    resumed = make_head(8, num_prototypes=4, kmeans_episode=24)
    resumed.load_state_dict(parted.state_dict())
    resumed.load_rank_state(saved)
    for head in (whole, resumed):
        head.episode.add(image[10:], text[10:])
        head.after_step()
    assert int(resumed.kmeans_episodes) == int(whole.kmeans_episodes) == 1
    assert torch.equal(resumed.prototypes["image"], whole.prototypes["image"])
    assert make_head(8, num_prototypes=4, kmeans_episode=24).rank_state() is None
