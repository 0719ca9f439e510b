"""The caption objective on a CoCa model: equal to open_clip's CoCaLoss caption part on a padded
batch (the trimmed text pass loses nothing), checked against the config, and trained by the engine
beside the contrastive term. (2-process exactness: tests/test_loss_terms_distributed.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from open_clip.loss import CoCaLoss

from tiny_arch import TINY_ARCH
from vlp.config import LossTermConfig, load_config
from vlp.errors import ConfigError
from vlp.losses.registry import compute_objective
from vlp.models.dual_encoder import DualEncoder

IDS = torch.tensor([[62, 5, 9, 63, 0, 0, 0, 0], [62, 7, 63, 0, 0, 0, 0, 0], [62, 3, 4, 5, 8, 63, 0, 0]])
TERMS = "loss.terms=[{name: clip}, {name: caption, weight: 2.0}]"


def _open_clip_caption_loss(logits: torch.Tensor, labels: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    _, loss = CoCaLoss(caption_loss_weight=1.0, clip_loss_weight=0.0, pad_id=pad_id)(None, None, logits, labels, None)
    return loss


def test_the_caption_term_equals_open_clip_coca_loss_on_a_padded_batch():
    torch.manual_seed(0)
    model = DualEncoder(TINY_ARCH, heads={"caption": {"n_queries": 4}}).double()
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = model(images, IDS)
    ours = compute_objective(out, [LossTermConfig(name="caption", weight=1.0)])["caption"]
    # open_clip's CoCa runs the whole context: logits at every position but the last, labels text[:, 1:]
    head = model.heads["caption"]
    full = head.decode(head.image_memory(model.image_tower.token_features(images)),
                       model.text_tower.token_states(IDS)[:, :-1])
    anchor = _open_clip_caption_loss(full, IDS[:, 1:])
    assert out["caption_logits"].shape[1] == 5 < full.shape[1] == 7  # ours stopped after the last end token
    assert ours.item() == pytest.approx(anchor.item(), rel=1e-12)
    params = [p for p in head.parameters()]
    for got, want in zip(torch.autograd.grad(ours, params, retain_graph=True), torch.autograd.grad(anchor, params)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert ours.item() == pytest.approx(float(torch.log(torch.tensor(64.0))), rel=0.2)  # near uniform at init


def test_another_pad_id_is_ignored_as_open_clip_ignores_it():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 9, generator=g, dtype=torch.float64)
    labels = torch.tensor([[3, 2, 7, 7], [1, 7, 7, 7]])
    outputs = {"caption_logits": logits, "caption_labels": labels}
    ours = compute_objective(outputs, [LossTermConfig(name="caption", weight=1.0, options={"pad_id": 7})])["caption"]
    assert ours.item() == pytest.approx(_open_clip_caption_loss(logits, labels, pad_id=7).item(), rel=1e-12)
    counted = torch.nn.functional.cross_entropy(logits[[0, 0, 1], [0, 1, 0]], torch.tensor([3, 2, 1]))
    assert ours.item() == pytest.approx(counted.item(), rel=1e-12)  # the mean over the 3 non-pad tokens


def test_the_caption_term_needs_the_caption_head_in_the_config():
    with pytest.raises(ConfigError, match=r"loss.terms\[1\] \(caption\) needs model.heads.caption"):
        load_config("configs/tiny.yaml", [TERMS])
    cfg = load_config("configs/tiny.yaml", [TERMS, "model.heads={caption: {n_queries: 16}}"])
    assert [t.name for t in cfg.loss.terms] == ["clip", "caption"] and cfg.model.heads == {"caption": {"n_queries": 16}}


def test_the_engine_trains_a_coca_model_with_both_losses_logged(shapes_dir, tmp_path):
    from test_engine_faults import SMALL
    from vlp.train import engine

    cfg = load_config("configs/tiny.yaml", [TERMS, "model.heads={caption: {n_queries: 8}}", *SMALL, "train.steps=4",
                                            f"data.train_shards={shapes_dir}/train", f"train.output_dir={tmp_path}",
                                            "train.run_name=coca"])
    run = engine.train(cfg)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4
    for record in records:
        assert record["loss/clip"] > 0 and record["loss/caption"] > 0
        assert record["loss/total"] == pytest.approx(record["loss/clip"] + 2.0 * record["loss/caption"], rel=1e-4)
    assert records[0]["loss/caption"] == pytest.approx(float(torch.log(torch.tensor(49408.0))), rel=0.1)
    assert records[-1]["loss/caption"] < records[0]["loss/caption"]
    weights = torch.load(next(run.rglob("*.pt")), map_location="cpu", weights_only=True)
    state = weights.get("model", weights)
    assert any(key.startswith("heads.caption.text_decoder.") for key in state)
