"""Training a SentencePiece tokenizer on the captions of WebDataset shards.

Captions are each sample's ``.txt`` plus, when the sample has a ``.json`` with a ``captions``
list (several captions per image), every caption of that list that differs from the ``.txt``.
Shards are read member by member with :mod:`tarfile`; nothing is decoded but text and JSON.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List

from vlp.utils.atomic import write_bytes_atomic


def split_member_name(name: str) -> tuple[str, str]:
    """(sample key, field) of a tar member by webdataset's rule: the key ends at the first '.'
    of the file name (``dir/000001.neg.json`` -> (``dir/000001``, ``neg.json``))."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext if dot else "")


def iter_shard_samples(path: str) -> Iterator[Dict[str, Any]]:
    """Samples of one tar shard as {"__key__": key (str), field: raw bytes}, in file order.

    Members of one sample are consecutive in a WebDataset shard; a member without a field
    (no '.') is not part of any sample and is skipped."""
    current: Dict[str, Any] = {}
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_member_name(member.name)
            if not ext:
                continue
            if current and current["__key__"] != key:
                yield current
                current = {}
            if not current:
                current["__key__"] = key
            handle = tar.extractfile(member)
            current[ext] = handle.read() if handle is not None else b""
    if current:
        yield current


def sample_captions(sample: Dict[str, Any]) -> List[str]:
    """The caption texts of one raw sample (``txt`` first, then new ones from ``json['captions']``)."""
    captions: List[str] = []
    if "txt" in sample:
        text = sample["txt"].decode("utf-8", errors="replace").strip()
        if text:
            captions.append(text)
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError):
            meta = None
        listed = meta.get("captions") if isinstance(meta, dict) else None
        if isinstance(listed, list):
            captions += [c.strip() for c in listed if isinstance(c, str) and c.strip() and c.strip() not in captions]
    return captions


@dataclass
class CaptionStats:
    shards: int = 0
    samples: int = 0
    captions: int = 0
    samples_without_caption: int = 0
    per_shard: Dict[str, int] = field(default_factory=dict)


def iter_captions(urls: Iterable[str], stats: CaptionStats) -> Iterator[str]:
    """Every caption of every sample of ``urls``, counting into ``stats``."""
    for url in urls:
        stats.shards += 1
        n = 0
        for sample in iter_shard_samples(url):
            stats.samples += 1
            n += 1
            captions = sample_captions(sample)
            if not captions:
                stats.samples_without_caption += 1
            for caption in captions:
                stats.captions += 1
                yield caption
        stats.per_shard[os.path.basename(url)] = n


def train_sentencepiece(captions: Iterable[str], out: str | os.PathLike, vocab_size: int, *,
                        model_type: str = "unigram", character_coverage: float = 1.0,
                        hard_vocab_limit: bool = False, threads: int = 1, seed_sentencepiece_size: int = 1_000_000,
                        ) -> int:
    """Train a SentencePiece model on ``captions`` and write it atomically to ``out``.

    The model has an unknown piece (id 0) but no bos/eos/pad: vlp's tokenizer adds its own start
    and end tokens at the top of the vocabulary. With ``hard_vocab_limit=False`` a corpus too small
    for ``vocab_size`` yields a smaller model instead of an error. Returns the pieces in the model.
    """
    import sentencepiece as spm

    if vocab_size < 4:
        raise ValueError(f"vocab_size must be >= 4, got {vocab_size}")
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_writer=buffer, vocab_size=vocab_size, model_type=model_type,
        character_coverage=character_coverage, hard_vocab_limit=hard_vocab_limit, num_threads=threads,
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, seed_sentencepiece_size=seed_sentencepiece_size,
        minloglevel=2,
    )
    proto = buffer.getvalue()
    write_bytes_atomic(out, proto)
    return int(spm.SentencePieceProcessor(model_proto=proto).get_piece_size())
