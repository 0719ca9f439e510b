"""Tokenizers: SentencePiece round trip and training CLI, HF from a local directory (its own ids),
vocabulary size of the text tower, pooling at the end token (argmax for SentencePiece, the first
end token for HF ids) and trimming."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tiny_arch import TINY_ARCH
from data_prep.tokenizer_train import train_sentencepiece
from vlp.config import ConfigError, ModelConfig
from vlp.data.tokenizers import HFTokenizer, SentencePieceTokenizer, build_tokenizer, tokenizer_vocab_size
from vlp.models.factory import build_model

ROOT = Path(__file__).resolve().parents[1]
COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["cube", "ball", "cone", "ring", "star", "box"]
RELATIONS = ["left of", "right of", "above", "below", "next to"]


def _captions(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"a {rng.choice(COLORS)} {rng.choice(SHAPES)} {rng.choice(RELATIONS)} a "
            f"{rng.choice(COLORS)} {rng.choice(SHAPES)}" for _ in range(n)]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sp") / "caps.model"
    pieces = train_sentencepiece(_captions(), path, vocab_size=60)
    assert path.is_file() and 30 <= pieces <= 60
    return path


def _save_word_level(directory: Path, framed: bool = True) -> Path:
    """A WordLevel tokenizer over the caption words; ``framed``: a post-processor adds [CLS] ... [SEP]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(_captions(), trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[CLS]", "[SEP]"]))
    if framed:
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return _save_word_level(tmp_path_factory.mktemp("hf"))


def test_sentencepiece_round_trip_start_end_and_truncation(sp_model: Path) -> None:
    tok = SentencePieceTokenizer(sp_model, context_length=32)
    captions = _captions(20, seed=1)
    tokens = tok(captions)
    assert tokens.shape == (20, 32) and tokens.dtype == torch.long
    assert tok.eot_id == tok.vocab_size - 1 and tok.sot_id == tok.vocab_size - 2
    for row, caption in zip(tokens, captions):
        n = int((row != 0).sum())
        assert row[0] == tok.sot_id and row[n - 1] == tok.eot_id and (row[n:] == 0).all()
        assert tok.decode(row) == caption
    short = SentencePieceTokenizer(sp_model, context_length=5)(captions)
    assert short.shape == (20, 5)
    assert (short[:, 0] == tok.sot_id).all() and (short[:, -1] == tok.eot_id).all()
    assert torch.equal(short[:, 1:4], tokens[:, 1:4])  # the first pieces of the caption survive


def test_tokenizers_pickle_and_rebuild_identically(sp_model: Path, hf_dir: Path) -> None:
    captions = _captions(5, seed=2)
    for tok in (SentencePieceTokenizer(sp_model, 16), HFTokenizer(hf_dir, 16)):
        clone = pickle.loads(pickle.dumps(tok))
        assert torch.equal(clone(captions), tok(captions))


def test_hf_tokenizer_from_local_directory_keeps_its_own_ids(hf_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = build_tokenizer(f"hf:{hf_dir}", 12)
    words = sorted({w for c in _captions() for w in c.split()})
    assert tok.vocab_size == len(words) + 4  # words + [UNK] [PAD] [CLS] [SEP]: no id added or shifted
    assert (tok.pad_id, tok.sot_id, tok.eot_id) == (1, 2, 3)
    tokens = tok(["a red cube above a blue ball", "zebra", "  a\tred   cube "])
    hf = AutoTokenizer.from_pretrained(str(hf_dir))
    assert tokens[0].tolist() == hf("a red cube above a blue ball", padding="max_length", max_length=12)["input_ids"]
    assert tokens[0, :9].tolist()[0] == 2 and tokens[0, 8] == 3 and (tokens[0, 9:] == 1).all()
    assert tok.decode(tokens[0]) == "a red cube above a blue ball"
    assert tokens[1, :3].tolist() == [2, 0, 3]  # [UNK] keeps its HF id 0
    assert tokens[2, :5].tolist() == tokens[0, :4].tolist() + [3]  # whitespace cleaned as open_clip does
    with pytest.raises(FileNotFoundError, match="not found: /nonexistent/tok"):
        build_tokenizer("hf:/nonexistent/tok", 8)


def test_open_clip_tower_with_hf_ids_pools_at_the_end_token_or_says_why_not(hf_dir: Path, tmp_path: Path) -> None:
    from vlp.models.factory import model_arch

    text_cfg = model_arch(ModelConfig(arch=TINY_ARCH, tokenizer=f"hf:{hf_dir}"))["text_cfg"]
    assert (text_cfg["pool_type"], text_cfg["eos_id"], text_cfg["pad_id"]) == ("eos", 3, 1)
    bare = _save_word_level(tmp_path / "bare", framed=False)
    with pytest.raises(ValueError, match="puts no end token after a text"):
        model_arch(ModelConfig(arch=TINY_ARCH, tokenizer=f"hf:{bare}"))
    argmax = {**TINY_ARCH, "text_cfg": {**TINY_ARCH["text_cfg"], "pool_type": "argmax"}}
    with pytest.raises(ValueError, match="pool_type 'argmax' pools at the largest id"):
        model_arch(ModelConfig(arch=argmax, tokenizer=f"hf:{hf_dir}"))


def test_sentencepiece_cleans_text_as_open_clip_does(sp_model: Path) -> None:
    tok = SentencePieceTokenizer(sp_model, 16)
    assert torch.equal(tok(["a red &amp; blue\n cube "]), tok(["a red & blue cube"]))


def test_model_vocab_size_follows_tokenizer(sp_model: Path, hf_dir: Path) -> None:
    for spec in (f"sentencepiece:{sp_model}", f"hf:{hf_dir}"):
        model = build_model(ModelConfig(arch=TINY_ARCH, tokenizer=spec))
        expected = tokenizer_vocab_size(spec)
        assert expected != TINY_ARCH["text_cfg"]["vocab_size"]
        assert model.clip.token_embedding.weight.shape[0] == expected == model.vocab_size
    assert tokenizer_vocab_size("open_clip") is None
    assert build_model(ModelConfig(arch=TINY_ARCH)).clip.token_embedding.weight.shape[0] == 64


def test_config_rejects_bad_tokenizer_specs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.tokenizer: .*valid forms: open_clip, hf:DIR, sentencepiece:FILE"):
        ModelConfig(arch=TINY_ARCH, tokenizer="bert")
    with pytest.raises(ConfigError, match=f"sentencepiece model file not found: {tmp_path}/no.model"):
        ModelConfig(arch=TINY_ARCH, tokenizer=f"sentencepiece:{tmp_path}/no.model")
    with pytest.raises(ConfigError, match=f"Hugging Face tokenizer directory not found: {tmp_path}/nodir"):
        ModelConfig(arch=TINY_ARCH, tokenizer=f"hf:{tmp_path}/nodir")


@pytest.mark.parametrize("kind", ["sentencepiece", "hf"])
def test_tower_pools_end_token_and_trimming_equals_full_forward(kind: str, sp_model: Path, hf_dir: Path) -> None:
    from open_clip.transformer import text_global_pool

    spec = f"sentencepiece:{sp_model}" if kind == "sentencepiece" else f"hf:{hf_dir}"
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=TINY_ARCH, tokenizer=spec)).double().eval()
    tok = build_tokenizer(spec, model.context_length)
    captions = ["a red cube", "a blue ball left of a green cone next to a star", "a ring", "cube"]
    tokens = tok(captions)
    end_positions = torch.tensor([int((row == tok.eot_id).nonzero()[0]) for row in tokens])
    assert model.clip.text_pool_type == ("argmax" if kind == "sentencepiece" else "eos")
    positions = torch.arange(tokens.shape[1]).expand_as(tokens).unsqueeze(-1)  # which position the tower pools
    pooled = text_global_pool(positions, tokens, model.clip.text_pool_type, eos_token_id=model.clip.text_eos_id)
    assert torch.equal(pooled.squeeze(-1), end_positions)
    assert end_positions.tolist()[1] == model.context_length - 1  # truncated: end token last
    assert len(set(end_positions.tolist())) > 1  # trimming actually shortens the batch
    assert torch.allclose(model.encode_text(tokens), F.normalize(model.clip.encode_text(tokens), dim=-1), atol=1e-12)


def test_loading_a_checkpoint_rebuilds_sentencepiece_tokenizer(sp_model: Path, tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from vlp.config import Config
    from vlp.interop.vlp_files import load_model

    cfg = Config()
    cfg.model = ModelConfig(arch=TINY_ARCH, tokenizer=f"sentencepiece:{sp_model}")
    model = build_model(cfg.model)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    yaml = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    torch.save({"config": yaml, "model": model.state_dict()}, ckpt_dir / "final.pt")
    loaded = load_model(tmp_path / "run")
    assert loaded.model.vocab_size == SentencePieceTokenizer(sp_model, 8).vocab_size
    assert torch.equal(loaded.tokenizer(["a red cube"]), SentencePieceTokenizer(sp_model, 8)(["a red cube"]))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_tokenizer_cli_trains_on_shards(tmp_path: Path, cli_env: dict) -> None:
    import webdataset as wds

    shards = tmp_path / "shards"
    shards.mkdir()
    captions = _captions(120, seed=3)
    for s in range(2):
        with wds.TarWriter(str(shards / f"shard-{s:06d}.tar")) as sink:
            for i in range(60):
                extra = {"json": {"captions": [captions[60 * s + i], "a striped zebra"]}} if i == 0 else {}
                sink.write({"__key__": f"{s}{i:05d}", "txt": captions[60 * s + i], "jpg": b"\xff\xd8", **extra})
    out = tmp_path / "tok.model"
    run = subprocess.run([sys.executable, "-m", "data_prep", "tokenizer", "--shards", str(shards), "--vocab-size", "50",
                          "--out", str(out)], cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "tok.model.json").read_text())
    assert summary["samples"] == 120 and summary["captions"] == 122 and summary["shards"] == 2
    tok = SentencePieceTokenizer(out, 16)
    assert summary["model_vocab_size"] == tok.vocab_size
    assert tok.decode(tok(["a striped zebra"])[0]) == "a striped zebra"  # learned from the json caption list
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
