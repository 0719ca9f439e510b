"""The recipes in configs/: every one resolves, and the tiny variants of the head recipes train
through the engine (CoCa then writes captions with the eval command; ProtoCLIP logs its
prototype usage)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from eval.training import evaluate_at_end
from vlp.config import load_config
from vlp.train import cli, engine

RECIPES = sorted(Path("configs").glob("*.yaml"))
SHRINK = [  # the tiny recipes at test size: 3 steps of batch 8 on 48 px shapes
    "model.arch.vision_cfg.image_size=48", "model.arch.vision_cfg.layers=1", "model.arch.text_cfg.layers=1",
    "model.arch.text_cfg.context_length=16", "train.steps=3", "train.batch_size=8", "train.log_every=1",
    "optim.warmup_steps=1", "data.shuffle_buffer=0", "data.workers=0", "eval.at_end=false",
]


def _user_trained_tokenizer(recipe: Path, tmp_path: Path) -> list[str]:
    """A recipe may name a SentencePiece model the user trains from their captions first (its
    comment says how): stand one in so the rest of the recipe resolves here."""
    from data_prep.tokenizer_train import train_sentencepiece

    text = recipe.read_text()
    if "tokenizer: sentencepiece:" not in text:
        return []
    captions = [f"a {c} {s} next to a {c2} {s2}" for c in ("red", "green", "blue") for s in ("cube", "ball")
                for c2 in ("red", "blue") for s2 in ("ring", "star")]
    train_sentencepiece(captions * 3, tmp_path / "spm.model", vocab_size=30)
    return [f"model.tokenizer=sentencepiece:{tmp_path / 'spm.model'}"]


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_resolves(recipe: Path, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    overrides = _user_trained_tokenizer(recipe, tmp_path)
    assert cli.main(["--config", str(recipe), "--print-config", *overrides]) == 0
    printed = capsys.readouterr().out
    cfg = load_config(str(recipe), overrides)
    assert f"steps: {cfg.train.steps}" in printed and f"lr: {cfg.optim.lr}" in printed


def test_real_scale_recipes_hold_the_published_settings() -> None:
    """open_clip's LAION-400M ViT-B/32 run and SigLIP ViT-B/16: global batch 32,768 at the GPU counts
    their comments spell out, and the published optimiser settings."""
    clip = load_config("configs/clip_vit_b32.yaml")
    assert clip.model.arch == "ViT-B-32" and [t.name for t in clip.loss.terms] == ["clip"]
    assert (clip.optim.lr, clip.optim.weight_decay, clip.optim.warmup_steps, clip.optim.schedule) == \
        (5e-4, 0.2, 2000, "cosine")
    assert clip.train.precision == "bf16" and clip.train.batch_size * 128 * clip.train.accum_steps == 32768
    assert round(clip.train.steps * 32768 / 407e6) == 32  # 32 epochs of LAION-400M
    text = Path("configs/clip_vit_b32.yaml").read_text()
    assert "train.accum_steps=16" in text and "8 x 256 x 16 = 32,768" in text

    siglip_text = Path("configs/siglip_vit_b16.yaml").read_text()
    import yaml

    siglip = yaml.safe_load(siglip_text)  # the tokenizer file is the user's to train: read the YAML as written
    assert siglip["loss"]["terms"] == [{"name": "siglip"}]
    assert (siglip["optim"]["lr"], siglip["optim"]["weight_decay"]) == (1e-3, 1e-4)
    assert siglip["model"]["init_logit_bias"] == -10.0 and math.exp(siglip["model"]["init_logit_scale"]) == \
        pytest.approx(10.0, rel=1e-6)
    assert siglip["train"]["batch_size"] * 128 == 32768 and "16 x 256 x 8 = 32,768" in siglip_text
    assert siglip["model"]["arch"]["vision_cfg"]["timm_model_name"] == "vit_base_patch16_siglip_224"


def test_head_recipes_hold_the_published_settings() -> None:
    coca = load_config("configs/coca_vit_b32.yaml")
    assert [(t.name, t.weight) for t in coca.loss.terms] == [("clip", 1.0), ("caption", 2.0)]
    assert (coca.optim.lr, coca.optim.weight_decay, coca.optim.schedule) == (8e-4, 0.01, "linear")
    assert coca.optim.warmup_steps == coca.train.steps // 50  # 2% warmup
    proto = load_config("configs/protoclip_rn50.yaml")
    assert proto.model.arch == "RN50" and proto.model.heads["prototypes"]["num_prototypes"] == 20000
    assert (proto.optim.lr, proto.optim.weight_decay, proto.optim.warmup_steps) == (5e-4, 0.5, 15625)
    assert proto.train.batch_size * 8 == 512  # 8 GPUs


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tiny_coca_trains_and_captions_images(shapes_dir: Path, tmp_path: Path) -> None:
    from eval.__main__ import main
    from eval.datasets.shards import RetrievalShards

    cfg = load_config("configs/coca_tiny.yaml", [f"data.train_shards={shapes_dir}/train",
                                                 f"train.output_dir={tmp_path}", *SHRINK, "eval.at_end=true",
                                                 f"eval.builtin_root={shapes_dir}/eval", "eval.cache=false"])
    run = engine.train(cfg, evaluate=evaluate_at_end)
    results = json.loads((run / "eval_results.json").read_text())
    assert set(results) == {"zeroshot", "retrieval", "captioning", "compositional"}
    captioning = results["captioning"]
    assert captioning["task"] == "captioning" and "image_retrieval_recall@1" in results["retrieval"]["metrics"]
    assert {"bleu_1", "bleu_4", "cider"} <= set(captioning["metrics"]) and captioning["num_images"] > 0
    assert all(0.0 <= captioning["metrics"][k] <= 1.0 for k in ("bleu_1", "bleu_4"))
    lines = _metrics(run)
    assert [line["step"] for line in lines] == [1, 2, 3]
    for line in lines:
        assert line["loss/total"] == pytest.approx(line["loss/clip"] + 2.0 * line["loss/caption"], rel=1e-6)
    assert lines[-1]["loss/caption"] < lines[0]["loss/caption"]  # it learns to caption
    out = tmp_path / "captions.jsonl"
    data = shapes_dir / "eval" / "retrieval"
    assert main(["caption", "--model", str(run), "--images", str(data / "test" / "{0..0}.tar"), "--output", str(out),
                 "--no-progress", "--device", "cpu", "--num-workers", "0", "--no-cache", "--max-length", "6"]) == 0
    captions = [json.loads(line) for line in out.read_text().splitlines()]
    assert [c["key"] for c in captions] == [r.key for r in RetrievalShards(data)][: len(captions)] and captions
    assert all(isinstance(c["caption"], str) for c in captions)


def test_tiny_protoclip_trains_with_episodic_kmeans(shapes_dir: Path, tmp_path: Path) -> None:
    cfg = load_config("configs/protoclip_tiny.yaml", [
        f"data.train_shards={shapes_dir}/train", f"train.output_dir={tmp_path}", *SHRINK,
        "model.heads.prototypes.num_prototypes=4", "model.heads.prototypes.kmeans_episode=8"])
    run = engine.train(cfg)
    lines = _metrics(run)
    assert [line["step"] for line in lines] == [1, 2, 3]
    for line in lines:
        assert line["loss/total"] == pytest.approx(line["loss/clip"] + line["loss/prototype"], rel=1e-6)
        for side in ("image", "text"):
            assert 0 <= line[f"head/prototypes/{side}_usage_entropy"] <= math.log(4) + 1e-6
            assert 0 <= line[f"head/prototypes/{side}_unused"] <= 3
