"""Exports carry their tokenizer: a model trained with 'sentencepiece:FILE' or 'hf:DIR' (open_clip's
text tower or an HF one) exported with vlp-export loads back with the same ids and embeddings in
open_clip (local-dir model + tokenizer), in our eval loader and in `python -m eval`; what a format
cannot express is refused before anything is written. Train-free: tiny random models, all local."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch

from test_hf_text_tower import hf_arch, save_tiny_bert
from tiny_arch import TINY_ARCH
from data_prep.tokenizer_train import train_sentencepiece
from vlp.checkpoints import save_atomic
from vlp.config import Config, ModelConfig, config_to_yaml
from vlp.data.tokenizers import build_tokenizer
from vlp.export.cli import main as export_main
from vlp.interop.load import load_eval_model
from vlp.models.factory import build_model

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = [f"a {c} {s} left of a {c2} {s2}" for c in ("red", "green", "blue") for s in ("cube", "ball", "cone")
            for c2 in ("red", "blue") for s2 in ("ring", "star")]
TEXTS = ["a red cube left of a blue ring", "a green cone", "zebra", "", "a cube &amp; a “ball”",
         "a red cube left of a blue ring and a green cone left of a red star"]
KINDS = ["sentencepiece", "hf", "hf-tower"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tokenizers")
    train_sentencepiece(CAPTIONS * 3, root / "caps.model", vocab_size=40)
    return {"sentencepiece": root / "caps.model", "bert": save_tiny_bert(root / "bert")}


def _spec_and_arch(kind: str, sources: dict, folder: Path) -> tuple:
    """(model.tokenizer, model.arch) for a kind, with its tokenizer copied into ``folder`` (removable)."""
    if kind == "sentencepiece":
        folder.mkdir(parents=True)
        return f"sentencepiece:{shutil.copy(sources['sentencepiece'], folder)}", TINY_ARCH
    shutil.copytree(sources["bert"], folder)
    return f"hf:{folder}", (hf_arch(folder) if kind == "hf-tower" else TINY_ARCH)


def _run_dir(tmp_path: Path, spec: str, arch: dict) -> tuple:
    """A checkpoint saved the way vlp/train/engine.py does (train-free)."""
    cfg = Config()
    cfg.model = ModelConfig(arch=arch, tokenizer=spec)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    run = tmp_path / "run"
    save_atomic({"model": model.state_dict(), "step": 1, "config": config_to_yaml(cfg)}, run / "checkpoints" / "final.pt")
    return model, run


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", KINDS)
def test_open_clip_export_loads_with_the_same_ids_and_embeddings(kind: str, sources: dict, tmp_path: Path) -> None:
    spec, arch = _spec_and_arch(kind, sources, tmp_path / "tok")
    model, run = _run_dir(tmp_path, spec, arch)
    ours = build_tokenizer(spec, model.context_length)
    ids = ours(TEXTS)
    out = tmp_path / "export"
    assert export_main(["--model", str(run), "--format", "open_clip", "--output", str(out)]) == 0

    clip, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    assert torch.equal(open_clip.get_tokenizer(f"local-dir:{out}")(TEXTS), ids)
    with torch.no_grad():
        assert torch.allclose(clip.eval().encode_text(ids, normalize=True), model.encode_text(ids), atol=1e-6)
        assert torch.allclose(clip.encode_image(_images(), normalize=True), model.encode_image(_images()), atol=1e-6)

    shutil.rmtree(tmp_path / "tok")  # the export needs neither the training tokenizer / HF folder nor its place
    out = Path(shutil.move(out, tmp_path / "moved"))  # (open_clip itself reads an HF tower's config at the old path)
    loaded = load_eval_model(out)
    assert loaded.warnings == []  # was: 'the tokenizer emits id 49407, beyond the token embedding's 54 rows'
    assert torch.equal(loaded.tokenizer(TEXTS), ids)
    with torch.no_grad():
        assert torch.allclose(loaded.model.encode_text(ids), model.encode_text(ids), atol=1e-6)


def test_eval_cli_scores_the_open_clip_export_like_the_run(sources: dict, shapes_dir: Path, tmp_path: Path,
                                                           cli_env: dict) -> None:
    spec, arch = _spec_and_arch("sentencepiece", sources, tmp_path / "tok")
    _, run = _run_dir(tmp_path, spec, arch)
    assert export_main(["--model", str(run), "--format", "open_clip", "--output", str(tmp_path / "export")]) == 0
    results = {}
    for name, model in (("run", run), ("export", tmp_path / "export")):
        out = tmp_path / f"{name}.json"
        proc = subprocess.run([sys.executable, "-m", "eval", "zeroshot", "--model", str(model), "--dataset",
                               f"{shapes_dir}/eval/zeroshot", "--output", str(out), "--no-cache", "--no-progress",
                               "--num-workers", "0", "--device", "cpu"],
                              cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[name] = json.loads(out.read_text())["metrics"]
    assert results["export"]["acc1"] == pytest.approx(results["run"]["acc1"], abs=1e-9)
    assert results["export"]["acc5"] == pytest.approx(results["run"]["acc5"], abs=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_safetensors_export_records_its_text_files_beside_it(kind: str, sources: dict, tmp_path: Path) -> None:
    spec, arch = _spec_and_arch(kind, sources, tmp_path / "tok")
    model, run = _run_dir(tmp_path, spec, arch)
    ids = build_tokenizer(spec, model.context_length)(TEXTS)
    out = tmp_path / "out" / "tiny.safetensors"
    assert export_main(["--model", str(run), "--format", "safetensors", "--output", str(out)]) == 0
    assert (tmp_path / "out" / "tiny-text").is_dir()
    shutil.rmtree(tmp_path / "tok")  # the training tokenizer (and HF folder) are gone: the export carries them
    moved = Path(shutil.move(tmp_path / "out", tmp_path / "elsewhere")) / "tiny.safetensors"
    loaded = load_eval_model(moved)
    assert loaded.warnings == []
    assert torch.equal(loaded.tokenizer(TEXTS), ids)
    with torch.no_grad():
        assert torch.allclose(loaded.model.encode_text(ids), model.encode_text(ids), atol=1e-6)
    shutil.rmtree(moved.parent / "tiny-text")
    with pytest.raises(FileNotFoundError, match="is missing .*copy them together"):
        load_eval_model(moved)


def test_a_tokenizer_open_clip_cannot_express_is_refused_before_writing(tmp_path: Path, capsys) -> None:
    train_sentencepiece(CAPTIONS * 3, tmp_path / "chars.model", vocab_size=30, model_type="char")
    _, run = _run_dir(tmp_path, f"sentencepiece:{tmp_path / 'chars.model'}", TINY_ARCH)
    out = tmp_path / "exports" / "chars"
    assert export_main(["--model", str(run), "--format", "open_clip", "--output", str(out)]) == 2
    assert "has no Hugging Face equivalent" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "exports").exists()  # nothing written, not even a staging folder


def test_an_export_whose_tokenizer_open_clip_reads_differently_is_refused(sources: dict, tmp_path: Path,
                                                                         monkeypatch, capsys) -> None:
    import vlp.export.text_files as text_files
    from vlp.export.sentencepiece_hf import sentencepiece_as_hf

    def unframed(tokenizer):  # a conversion that loses the start/end tokens
        converted = sentencepiece_as_hf(tokenizer)
        converted.backend_tokenizer.post_processor = None
        return converted

    monkeypatch.setattr(text_files, "sentencepiece_as_hf", unframed)
    spec, arch = _spec_and_arch("sentencepiece", sources, tmp_path / "tok")
    _, run = _run_dir(tmp_path, spec, arch)
    out = tmp_path / "export"
    assert export_main(["--model", str(run), "--format", "open_clip", "--output", str(out)]) == 2
    assert "open_clip cannot load this tokenizer with the same ids" in capsys.readouterr().err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_replaces_an_earlier_export_but_no_other_folder(sources: dict, tmp_path: Path, capsys) -> None:
    spec, arch = _spec_and_arch("sentencepiece", sources, tmp_path / "tok")
    _, run = _run_dir(tmp_path, spec, arch)
    out = tmp_path / "export"
    for _ in range(2):
        assert export_main(["--model", str(run), "--format", "open_clip", "--output", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert export_main(["--model", str(run), "--format", "open_clip", "--output", str(other)]) == 2
    assert "not an earlier export" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["keep.txt"]
