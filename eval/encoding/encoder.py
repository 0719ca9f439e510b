"""Encoding datasets and texts for eval tasks: once per model and content (cache), split across
ranks (data parallel), and with the model loaded only when something must be encoded.

* :meth:`Encoder.records` reads a dataset's records without decoding an image (cached).
* :meth:`Encoder.images` gives the L2-normalised embedding of every good record's image, in
  dataset order. Cached per (model, dataset content): tasks reading the same files (zero-shot
  and retrieval over one folder, several runs) encode each image once; images the entry lacks
  are encoded and added.
* :meth:`Encoder.texts` encodes a list of strings in batches (all class prompts at once, not a
  loop over classes), cached per (model, exact strings).

Each also remembers its last answer in memory (even without a disk cache), so tasks that read
one dataset in turn (retrieval, then diagnostics) encode it once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from eval.datasets.base import EvalDataset
from eval.datasets.records import Skipped
from eval.encoding.batching import batches, split_skipped
from eval.encoding.cache import EmbeddingCache, digest_bytes
from eval.encoding.embed import EvalModel, encode_image_batch, encode_texts, eval_mode, model_device
from eval.encoding.parallel import EvalRuntime, map_sliced
from eval.encoding.source import ModelSource

log = logging.getLogger(__name__)


@dataclass
class EncodeOptions:
    batch_size: int = 256
    num_workers: int = 0
    progress: bool = True


@dataclass
class DatasetRecords:
    """A dataset's good records (``image`` None) in dataset order, and the samples skipped."""

    records: list[Any]
    skipped: list[Skipped] = field(default_factory=list)


@dataclass
class EncodedImages:
    """``records[i]`` (image None) has embedding ``embeddings[i]``; ``skipped`` counts every
    sample dropped (bad metadata, undecodable image, unreadable tar)."""

    dataset: str
    records: list[Any]
    embeddings: torch.Tensor
    skipped: int
    skip_reasons: list[Skipped] = field(default_factory=list)


class Encoder:
    """Encodes datasets and texts for one model, through a cache, on one or many ranks."""

    def __init__(self, source: ModelSource, cache: EmbeddingCache | None = None,
                 runtime: EvalRuntime | None = None, options: EncodeOptions | None = None,
                 device: str | torch.device | None = None) -> None:
        self.source = source
        self.cache = cache if cache is not None else EmbeddingCache(None)
        self.runtime = runtime if runtime is not None else EvalRuntime()
        self.options = options if options is not None else EncodeOptions()
        self.device = torch.device(device if device is not None else self.runtime.device)
        self.images_encoded = 0  # images this rank ran through the model (0 on a warm run)
        self.texts_encoded = 0
        self._placed = False
        self._last_images: Optional[tuple[EvalDataset, EncodedImages]] = None  # in-memory: the last answer
        self._last_texts: Optional[tuple[str, torch.Tensor]] = None

    @classmethod
    def for_loaded(cls, loaded: EvalModel, batch_size: int = 256, device: str | torch.device | None = None,
                   num_workers: int = 0, progress: bool = True, cache: EmbeddingCache | None = None,
                   runtime: EvalRuntime | None = None) -> "Encoder":
        """An encoder for a model in memory, on its own device by default (fingerprinted by its
        weights); uncached and one process unless ``cache`` / ``runtime`` are given."""
        return cls(ModelSource.from_loaded(loaded), cache, runtime, EncodeOptions(batch_size, num_workers, progress),
                   device=device if device is not None else model_device(loaded.model))

    @property
    def loaded(self) -> EvalModel:
        loaded = self.source.loaded
        if not self._placed:
            loaded.model.to(self.device)
            self._placed = True
        return loaded

    def model_warnings(self) -> list[str]:
        """Mismatches the loader reported (allowed with ``allow_mismatch``), remembered in the
        cache so a warm run, which never loads the model, reports them too."""
        key = digest_bytes("model-info", self.model_key())
        if self.source.is_loaded:
            warnings = [str(w) for w in getattr(self.source.loaded, "warnings", []) or []]
            if self.cache.enabled and self.runtime.is_main and self.cache.load(key) is None:
                self.cache.save(key, {"warnings": warnings})
            return warnings
        cached = self.cache.load(key)
        return list(cached["warnings"]) if cached is not None else []

    # ------------------------------------------------------------------ keys
    def content_digest(self, dataset: EvalDataset) -> str:
        return self.cache.files_digest(dataset.content_files()) if self.cache.enabled else ""

    def model_key(self) -> str:
        return self.source.fingerprint if self.cache.enabled else ""

    # ------------------------------------------------------------------ records
    def records(self, dataset: EvalDataset) -> DatasetRecords:
        """Every record of ``dataset`` without decoding images (cached by content)."""
        key = digest_bytes("records", dataset.options_tag(), self.content_digest(dataset))
        cached = self.cache.load(key)
        records = _records_from(cached["record_type"], cached["records"]) if cached is not None else None
        if cached is not None and records is not None:
            return DatasetRecords(records, [Skipped(*s) for s in cached["skipped"]])
        decode, only = dataset.decode_images, dataset.only_keys
        dataset.decode_images, dataset.only_keys = False, None
        part = (dataset.part, dataset.num_parts)
        dataset.partition(0, 1)
        try:
            records, skipped = split_skipped(list(iter(dataset)))
        finally:
            dataset.decode_images, dataset.only_keys = decode, only
            dataset.partition(*part)
        if self.runtime.is_main:
            self.cache.save(key, {"record_type": _record_type_name(records), "records": [tuple(r) for r in records],
                                  "skipped": [tuple(s) for s in skipped]})
        return DatasetRecords(records, skipped)

    # ------------------------------------------------------------------ images
    def images(self, dataset: EvalDataset, desc: str = "") -> EncodedImages:
        """Embeddings of the images of every good record of ``dataset``, in dataset order.

        Cache rows are keyed by :func:`sample_id` (position and key), so samples that share a key
        (e.g. shards whose keys restart) never share an embedding. Rank 0 reads the cache entry and
        every rank uses its copy, so ranks agree even when their caches differ. The same reader
        asked again (the next task on it) gets the answer kept in memory.
        """
        if self._last_images is not None and self._last_images[0] is dataset:
            return self._last_images[1]
        encoded = self._images(dataset, desc)
        self._last_images = (dataset, encoded)
        return encoded

    def _images(self, dataset: EvalDataset, desc: str) -> EncodedImages:
        meta = self.records(dataset)
        key = digest_bytes("images", self.model_key(), self.content_digest(dataset))
        main_entry = self.cache.load(key) if self.runtime.is_main else None
        entry = self.runtime.from_main(main_entry) or {"ids": [], "embeddings": torch.zeros(0, 0), "failed": {}}
        row_of = {k: i for i, k in enumerate(entry["ids"])}
        missing = [r for r in meta.records if sample_id(r) not in row_of and sample_id(r) not in entry["failed"]]
        if missing:
            ids, emb, failed = self._encode_images(dataset, missing, desc or f"images {dataset.name}")
            old = entry["embeddings"]
            if not old.numel():
                merged = emb
            else:
                merged = torch.cat([old, emb]) if emb.numel() else old
            entry = {"ids": list(entry["ids"]) + ids, "embeddings": merged, "failed": {**entry["failed"], **failed}}
            row_of = {k: i for i, k in enumerate(entry["ids"])}
            if self.runtime.is_main:
                self.cache.save(key, entry)
        good = [r for r in meta.records if sample_id(r) in row_of]
        bad = [Skipped(r.key, entry["failed"][sample_id(r)], r.index) for r in meta.records
               if sample_id(r) not in row_of]
        rows = torch.tensor([row_of[sample_id(r)] for r in good], dtype=torch.long)
        emb = entry["embeddings"][rows] if len(good) else torch.zeros(0, 0)
        skipped = meta.skipped + bad
        return EncodedImages(dataset.name, good, emb, len(skipped), skipped)

    def _encode_images(self, dataset: EvalDataset, records: list[Any], desc: str
                       ) -> tuple[list[str], torch.Tensor, dict[str, str]]:
        """Encode the images of ``records`` (the same list on every rank), this rank's part,
        gathered from all ranks: (sample ids, embeddings, {sample id: reason} of failures)."""
        from tqdm import tqdm

        loaded = self.loaded
        wanted = {sample_id(r) for r in records}
        state = (dataset.transform, dataset.decode_images)
        dataset.transform = loaded.image_transform
        dataset.decode_images, dataset.only_keys = True, {r.key for r in records}
        dataset.partition(self.runtime.rank, self.runtime.world)
        indexed: list[tuple[int, str, torch.Tensor]] = []
        failed: dict[str, str] = {}
        try:
            with eval_mode(loaded.model), tqdm(total=len(records), desc=desc, unit="img",
                                               disable=not (self.options.progress and self.runtime.is_main)) as bar:
                for items in batches(dataset, self.options.batch_size, self.options.num_workers):
                    good, skipped = split_skipped(items)
                    failed.update({sample_id(s): s.reason for s in skipped if sample_id(s) in wanted})
                    good = [r for r in good if sample_id(r) in wanted]
                    if good:
                        emb = encode_image_batch(loaded.model, [r.image for r in good], self.device)
                        indexed += [(r.index, sample_id(r), e) for r, e in zip(good, emb)]
                    bar.update(len(items) * self.runtime.world)
        finally:
            dataset.transform, dataset.decode_images = state
            dataset.only_keys = None
            dataset.partition(0, 1)
        self.images_encoded += len(indexed)  # this rank's share
        parts = self.runtime.gather((indexed, failed))
        indexed = sorted((item for part, _ in parts for item in part), key=lambda item: item[0])
        for _, part_failed in parts:
            failed.update(part_failed)
        emb = torch.stack([e for _, _, e in indexed]) if indexed else torch.zeros(0, 0)
        return [k for _, k, _ in indexed], emb, failed

    # ------------------------------------------------------------------ texts
    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        """[N, D] L2-normalised embeddings of ``texts`` (cached per model and exact strings; the
        last answer is also kept in memory)."""
        texts = list(texts)
        strings = digest_bytes(*texts)
        if self._last_texts is not None and self._last_texts[0] == strings:
            return self._last_texts[1]
        emb = self._texts(texts, digest_bytes("texts", self.model_key(), strings))
        self._last_texts = (strings, emb)
        return emb

    def _texts(self, texts: list[str], key: str) -> torch.Tensor:
        cached = self.runtime.from_main(self.cache.load(key) if self.runtime.is_main else None)
        if cached is not None:
            return cached["embeddings"]
        loaded = self.loaded

        def encode(part: slice) -> torch.Tensor:
            with eval_mode(loaded.model):
                out = encode_texts(loaded.model, loaded.tokenizer, texts[part], self.options.batch_size, self.device)
            return out if out.numel() else torch.zeros(0, 0)

        emb = map_sliced(self.runtime, len(texts), encode)
        self.texts_encoded += len(texts)
        if self.runtime.is_main:
            self.cache.save(key, {"embeddings": emb})
        return emb


def sample_id(item: Any) -> str:
    """A record's (or Skipped marker's) identity in a dataset: position and key, unique even when
    keys repeat (shards whose keys restart)."""
    return f"{item.index}/{item.key}"


def _record_type_name(records: list[Any]) -> str:
    return f"{type(records[0]).__module__}:{type(records[0]).__qualname__}" if records else ""


def _records_from(type_name: str, rows: list[tuple]) -> Optional[list[Any]]:
    """Rebuild cached record tuples as the NamedTuple type they were saved from (None when that
    type no longer exists: the entry is then a miss)."""
    if not rows:
        return []
    import importlib

    module, _, qualname = type_name.partition(":")
    try:
        record_type = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError):  # an entry written by code that named its types elsewhere
        return None
    return [record_type(*row) for row in rows]
