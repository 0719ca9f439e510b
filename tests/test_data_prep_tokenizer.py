"""``vlp-prep tokenizer`` when the captions cannot fill --vocab-size: a warning with the size
reached, or (under --strict / --hard-vocab-limit) rc 1, the size reached, and no model written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.__main__ import main as prep_main
from data_prep.shard_writer import ShardWriter
from data_prep.tokenizer_train import train_sentencepiece

CAPTIONS = ["a red cube left of a blue ball", "a green ball on a red cube", "two blue cubes",
            "a small yellow ball", "the red ball is right of the green cube"]


def _shards(root: Path) -> Path:
    with ShardWriter(root, "shard-%06d.tar", max_count=10) as writer:
        for i, caption in enumerate(CAPTIONS):
            writer.write({"__key__": f"{i:03d}", "txt": caption})
    return root


def _reachable(tmp_path: Path) -> int:
    """How many pieces SentencePiece can make of CAPTIONS (its soft-limit result)."""
    return train_sentencepiece(CAPTIONS, tmp_path / "probe.model", 8000)


def test_too_large_vocab_warns_with_size_reached(tmp_path: Path, capsys) -> None:
    reached = _reachable(tmp_path)
    assert 10 < reached < 8000
    out = tmp_path / "spm.model"
    code = prep_main(["tokenizer", "--shards", str(_shards(tmp_path / "s")), "--vocab-size", "8000", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0 and out.is_file()
    assert (f"warning: trained {reached} pieces, fewer than the requested --vocab-size 8000" in captured.err)
    assert f"trained {reached} pieces of the 8000 requested" in captured.out
    summary = json.loads(Path(f"{out}.json").read_text())
    assert summary["vocab_size_requested"] == 8000 and summary["vocab_size_reached"] == reached
    assert summary["vocab_size_filled"] is False


@pytest.mark.parametrize("flag", ["--strict", "--hard-vocab-limit"])
def test_strict_fails_naming_size_reached_and_writes_nothing(tmp_path: Path, capsys, flag: str) -> None:
    reached = _reachable(tmp_path)
    out = tmp_path / "spm.model"
    code = prep_main(["tokenizer", "--shards", str(_shards(tmp_path / "s")), "--vocab-size", "8000", "--out", str(out),
                      flag])
    err = capsys.readouterr().err
    assert code == 1 and not out.exists() and not Path(f"{out}.json").exists()
    assert (f"error: the captions fill only {reached} pieces, fewer than the requested --vocab-size 8000; "
            f"use more captions or a --vocab-size <= {reached}; no model written") in err


def test_reachable_vocab_is_silent_and_strict_passes(tmp_path: Path, capsys) -> None:
    reached = _reachable(tmp_path)
    out = tmp_path / "spm.model"
    code = prep_main(["tokenizer", "--shards", str(_shards(tmp_path / "s")), "--vocab-size", str(reached),
                      "--out", str(out), "--strict"])
    captured = capsys.readouterr()
    assert code == 0 and "warning" not in captured.err
    summary = json.loads(Path(f"{out}.json").read_text())
    assert summary["vocab_size_reached"] == reached and summary["vocab_size_filled"] is True
    code = prep_main(["tokenizer", "--shards", str(tmp_path / "s"), "--vocab-size", "5", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "error: SentencePiece: Vocabulary size is smaller than required_chars" in err
    from data_prep.tokenizer_train import VocabTooSmallError

    with pytest.raises(VocabTooSmallError) as caught:
        train_sentencepiece(CAPTIONS, tmp_path / "x.model", 8000, model_type="bpe", require_full=True)
    assert caught.value.requested == 8000 and 10 < caught.value.reached < 8000
    assert not (tmp_path / "x.model").exists()
