"""The training stream: shards -> samples -> decoded, augmented, tokenized batches.

Shards come from ``vlp.data.sources`` (epoch mode: each sample once per epoch across ranks x
readers; resampled mode: drawn with replacement, mixed by source weight). Each DataLoader worker is
one logical reader: its samples are shuffled in a buffer (``vlp.data.shuffle``), decoded with Pillow
(JPEGs at a reduced DCT size when the crop allows), augmented, tokenized and batched inside the
worker. Every random draw about a sample is seeded by the sample itself: one caption of its caption
list per (seed, epoch, key), its crop box and jitter per (seed, epoch, key, view), so a batch does
not depend on which worker read it or on what that worker did before. A sample that fails to read or
decode is skipped and counted; the counts ride along with the next batch as ``batch["skipped"]``.

Exact resume: every batch carries ``batch["position"]``, a snapshot of its reader (see
``vlp.data.position``); a loader built with ``position=LoaderPosition.state_dict()`` yields exactly
the batches the interrupted one would have yielded next, for any number of workers, in both modes.

Batch keys: ``image`` [B, 3, S, S], uint8 pixels with ``TrainTransform`` (the default, ``uint8_images``:
the consumer normalises, e.g. ``transforms.normalize_on_device`` on the training device) and
normalised float otherwise; ``text`` long [B, context]; ``key`` list of sample keys;
``skipped`` {reason: count}; with ``num_negatives`` K > 0 also ``neg_text`` long [B, K, context]
(the negatives of the drawn caption, padded by repetition, see ``negative_tokens``) and ``neg_mask``
bool [B, K] (True where a distinct negative is); with ``image_views`` 2 ``image_aug`` (a second
crop of each image) and with ``text_views`` 2 ``text_aug`` (a second caption view); ``position``
(plain ints, lists, tuples and strings: the producing reader's state right after this batch).
"""

from __future__ import annotations

import inspect
import random
import warnings
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import torch

from vlp.errors import ConfigError
from vlp.data.decode import (decode_image, image_bytes, pick_caption, sample_captions, sample_negatives,
                             second_caption)
from vlp.data.position import FORMAT, LoaderPosition, check_position, stream_settings
from vlp.data.shards import ShardSource, count_samples, resolve_sources
from vlp.data.shuffle import ShuffleBuffer, shuffle_rng
from vlp.data.skips import SkipCounter
from vlp.data.sources import PositionedReader, ShardStream, shard_stream, worker_info
from vlp.data.tokenizers import Tokenizer
from vlp.data.transforms import ImageTransform, draft_size_of, shared_batch_tensor

ShardsArg = Union[str, Sequence[Any]]


class Batch(dict):
    """One training batch: a plain dict of its keys (see the module doc) that the DataLoader's
    ``pin_memory`` pins value by value, passing ``position`` through as it is (walking its few
    thousand numbers would cost the pinning thread more than pinning the images)."""

    def pin_memory(self, device: Any = None) -> "Batch":
        from torch.utils.data._utils.pin_memory import pin_memory

        return Batch({k: v if k == "position" else pin_memory(v, device) for k, v in self.items()})


class BatchAssembler:
    """Pipeline stage: raw samples in, batches out (in the worker). With a transform that has
    ``crop_resize``/``normalize_batch`` (``TrainTransform``) images are gathered as uint8 and batched
    as uint8 (``uint8_images``) or normalised once per batch, each view's crop and jitter drawn from a
    generator seeded by (seed, epoch, key, view); any other transform is called per image (its own
    randomness is its own)."""

    def __init__(self, batch_size: int, transform: ImageTransform, tokenizer: Tokenizer,
                 image_keys: Sequence[str], caption_key: str, skips: SkipCounter, *, seed: int = 0,
                 num_negatives: int = 0, draft: bool = True, image_views: int = 1, text_views: int = 1,
                 uint8_images: bool = True) -> None:
        self.batch_size, self.transform, self.tokenizer = batch_size, transform, tokenizer
        self.image_views, self.text_views = image_views, text_views
        self.image_keys, self.caption_key, self.skips = image_keys, caption_key, skips
        self.seed, self.num_negatives = seed, num_negatives
        self.draft_size = draft_size_of(transform) if draft else None
        self.fast = hasattr(transform, "crop_resize") and hasattr(transform, "normalize_batch")
        self.seeded = self.fast and "rng" in inspect.signature(transform.crop_resize).parameters
        self.uint8_images = uint8_images

    def _views(self, image: Any, epoch: int, key: str) -> List[Any]:
        """The image views of one sample: crops (and jitter) seeded per (seed, epoch, key, view)."""
        if self.seeded:
            return [self.transform.crop_resize(image, rng=random.Random(f"{self.seed}/{epoch}/{key}/{view}"))
                    for view in range(self.image_views)]
        return [self.transform.crop_resize(image) if self.fast else self.transform(image)
                for _ in range(self.image_views)]

    def _prepare(self, sample: Dict[str, Any]) -> tuple[List[Any], List[str], List[str]]:
        """([pixels per image view], [caption per text view], negatives) of one sample."""
        data = image_bytes(sample, self.image_keys)
        key, epoch = str(sample.get("__key__", "")), int(sample.get("__epoch__", 0))
        captions = sample_captions(sample, self.caption_key)
        caption = pick_caption(captions, self.seed, epoch, key)
        texts = [caption] + ([second_caption(captions, caption, self.seed, epoch, key)] if self.text_views == 2 else [])
        negatives = sample_negatives(sample, caption)[: self.num_negatives] if self.num_negatives else []
        return self._views(decode_image(data, self.draft_size), epoch, key), texts, negatives

    def _batch(self, views: List[List[Any]], texts: List[List[str]], keys: List[str],
               negatives: List[List[str]]) -> Dict[str, Any]:
        def images(pixels: List[Any]) -> torch.Tensor:
            if not self.fast:
                return torch.stack(pixels)
            if not self.uint8_images:
                return self.transform.normalize_batch(torch.stack(pixels))
            # uint8 [B, 3, S, S] written straight into shared memory: no copy on the way to the consumer
            return torch.stack(pixels, out=shared_batch_tensor((len(pixels), *pixels[0].shape), torch.uint8))

        batch = Batch(image=images([v[0] for v in views]), text=self.tokenizer([t[0] for t in texts]),
                      key=keys, skipped=self.skips.drain())
        if self.image_views == 2:
            batch["image_aug"] = images([v[1] for v in views])
        if self.text_views == 2:
            batch["text_aug"] = self.tokenizer([t[1] for t in texts])
        if self.num_negatives:
            batch.update(negative_tokens(negatives, self.num_negatives, self.tokenizer, batch["text"].shape[1]))
        return batch

    def __call__(self, samples: Iterator[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        pixels: List[List[Any]] = []
        captions: List[List[str]] = []
        keys: List[str] = []
        negatives: List[List[str]] = []
        for sample in samples:
            try:
                image, caption, negs = self._prepare(sample)
            except ValueError as err:  # a known reason: decode.py names it
                self.skips.add(str(err), str(sample.get("__key__", "")))
                continue
            except Exception as err:  # anything else about one sample must not end a long run either
                self.skips.add(f"sample_error:{type(err).__name__}", f"{sample.get('__key__', '')}: {err}"[:200])
                continue
            pixels.append(image)
            captions.append(caption)
            keys.append(str(sample.get("__key__", "")))
            negatives.append(negs)
            if len(pixels) == self.batch_size:
                yield self._batch(pixels, captions, keys, negatives)
                pixels, captions, keys, negatives = [], [], [], []
        if pixels:  # only a finite stream (epochs=N) ends: its last, partial batch
            yield self._batch(pixels, captions, keys, negatives)


def negative_tokens(negatives: List[List[str]], k: int, tokenizer: Tokenizer, context: int) -> Dict[str, torch.Tensor]:
    """{"neg_text": [B, k, context], "neg_mask": [B, k]} from per-sample lists. A sample with fewer
    than k negatives repeats its own (or, with none, the empty caption): every row is a real text
    that does not match the image, so a loss that ignores ``neg_mask`` still sees no garbage."""
    rows, mask = [], torch.zeros(len(negatives), k, dtype=torch.bool)
    for i, negs in enumerate(negatives):
        negs = negs[:k]
        mask[i, :len(negs)] = True
        rows.extend(negs[j % len(negs)] if negs else "" for j in range(k))
    tokens = tokenizer(rows)
    if tokens.shape[1] != context:
        tokens = tokens[:, :context] if tokens.shape[1] > context else torch.nn.functional.pad(
            tokens, (0, context - tokens.shape[1]))
    return {"neg_text": tokens.view(len(negatives), k, context), "neg_mask": mask}


def check_readers(sources: List[ShardSource], resampled: bool, world_size: int, workers: int) -> None:
    """Error when epoch mode would leave a reader without shards; warn on uneven splits."""
    readers = world_size * max(workers, 1)
    n = sum(len(s.urls) for s in sources)
    if not resampled and len({s.weight for s in sources}) > 1:
        raise ConfigError("data.sources: different weights need data.resampled=true (epoch mode reads every shard once)")
    if n < readers:
        msg = (f"data.workers: {n} shard(s) for {world_size} rank(s) x {max(workers, 1)} worker(s): "
               f"some readers would get no data")
        if not resampled:
            raise ConfigError(msg + "; lower data.workers, write more shards, or set data.resampled=true")
        warnings.warn(msg + " of their own; in resampled mode they draw the same shards, so samples repeat sooner")
    elif not resampled and n % readers:
        warnings.warn(f"{n} shards do not split evenly over {readers} readers; "
                      "per-epoch sample counts differ between readers")


class TrainStream(torch.utils.data.IterableDataset):
    """This rank's batches, each with its ``position``: DataLoader worker i plays logical reader
    (i + offset) mod ``readers`` (offset: batches consumed before a resume, mod readers), which reads
    its share of ``shards``, shuffles and assembles; with ``resume`` (a ``LoaderPosition`` state)
    each reader starts from its saved snapshot."""

    def __init__(self, shards: ShardStream, assembler: BatchAssembler, skips: SkipCounter, settings: Dict[str, Any], *,
                 start_epoch: int = 0, resume: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__()
        self.shards, self.assembler, self.skips, self.settings = shards, assembler, skips, settings
        self.readers, self.buffer = settings["readers"], settings["shuffle_buffer"]
        self.start_epoch = start_epoch
        self.offset = int(resume["batches"]) % self.readers if resume else 0
        self.resume = list(resume["readers"]) if resume else [None] * self.readers

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        physical, _ = worker_info()
        reader = (physical + self.offset) % self.readers
        snapshot = self.resume[reader]
        source = PositionedReader(self.shards, reader, self.readers, self.skips.handler)
        shuffle = None
        if self.buffer > 0:
            rng = shuffle_rng(self.settings["seed"], self.settings["rank"], reader)
            shuffle = ShuffleBuffer(self.buffer, min(self.buffer, 1000), rng)
        produced, restored, samples = 0, [], None
        if snapshot is not None:
            if int(snapshot["reader"]) != reader:
                raise ValueError(f"the saved loader position lists reader {snapshot['reader']} at place {reader}")
            restored, samples = source.restore(snapshot["shard"], snapshot["read"], snapshot["buffer"])
            produced = int(snapshot["batches"])
            if shuffle is not None:
                shuffle.set_rng_state(snapshot["rng"])
        samples = source.samples() if samples is None else samples
        if shuffle is not None:
            samples = shuffle(samples, restored)
        header = {"format": FORMAT, "stream": self.settings, "start_epoch": self.start_epoch, "reader": reader}
        for batch in self.assembler(samples):
            produced += 1
            buffer, rng = shuffle.state() if shuffle is not None else ([], None)
            batch["position"] = {**header, "batches": produced, "epoch": source.epoch, "shard": source.ordinal,
                                 "read": source.read, "buffer": buffer, "rng": rng}
            yield batch


def build_train_loader(shards: ShardsArg, batch_size: int, transform: ImageTransform, tokenizer: Tokenizer, *,
                       workers: int = 1, shuffle_buffer: int = 2000, seed: int = 0, rank: int = 0,
                       world_size: int = 1, image_keys: Sequence[str] = ("jpg", "png", "webp"),
                       caption_key: str = "txt", resampled: bool = False, epochs: Optional[int] = None,
                       num_negatives: int = 0, draft: bool = True, image_views: int = 1,
                       text_views: int = 1, uint8_images: bool = True,
                       pin_memory: Optional[bool] = None, start_epoch: int = 0,
                       position: Optional[Mapping[str, Any]] = None) -> torch.utils.data.DataLoader:
    """A DataLoader of this rank's training batches (already collated in the workers). ``shards`` is a
    spec string or a list of {shards, weight} sources. Endless unless ``epochs`` is given (epoch mode
    only), in which case the last batch may be partial. ``uint8_images``: with ``TrainTransform``, images
    come as uint8 pixels for the consumer to normalise (see the module doc). ``pin_memory`` (default:
    when CUDA is available) pins batches for asynchronous host-to-device copies. ``start_epoch``: where a
    resumed run without a position picks the stream up (epoch mode: that epoch's shard permutation, from
    its start; resampled mode: a fresh draw sequence). ``position``: a ``LoaderPosition.state_dict()``
    to continue from exactly (then ``start_epoch`` is the position's); refused with a ValueError when
    it was saved by a loader with other stream settings (shards, batch size, workers, world size, rank,
    seed, mode, shuffle buffer). ``loader.position`` is a ``LoaderPosition`` to ``observe`` its batches."""
    if resampled and epochs is not None:
        raise ValueError("epochs= bounds epoch mode; a resampled stream is endless")
    sources = resolve_sources(shards)
    check_readers(sources, resampled, world_size, workers)
    settings = stream_settings([s.urls for s in sources], [s.weight for s in sources], batch_size=batch_size,
                               readers=max(workers, 1), world_size=world_size, rank=rank, seed=seed,
                               resampled=resampled, shuffle_buffer=max(shuffle_buffer, 0))
    if position:
        check_position(position, settings)
        start_epoch = int(position["start_epoch"])
    skips = SkipCounter()
    assembler = BatchAssembler(batch_size, transform, tokenizer, image_keys, caption_key, skips, seed=seed,
                               num_negatives=num_negatives, draft=draft, image_views=image_views,
                               text_views=text_views, uint8_images=uint8_images)
    stream = TrainStream(shard_stream(sources, resampled=resampled, seed=seed, rank=rank, world_size=world_size,
                                      epochs=epochs, start_epoch=start_epoch),
                         assembler, skips, settings, start_epoch=start_epoch, resume=position or None)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    loader = torch.utils.data.DataLoader(stream, batch_size=None, collate_fn=_as_assembled, num_workers=workers,
                                         pin_memory=pin_memory, persistent_workers=workers > 0 and epochs is None,
                                         prefetch_factor=4 if workers else None)
    loader.position = LoaderPosition(position or None)
    return loader


def _as_assembled(batch: Batch) -> Batch:
    """The DataLoader's per-item collate: a batch comes assembled (tensors), so it passes as it is.
    The default (``default_convert``) walks every element of the batch, its position's shuffle-buffer
    list included: about 5 ms of the worker per batch of 64 for nothing."""
    return batch


def loader_from_config(data, batch_size: int, transform: ImageTransform, tokenizer: Tokenizer, *,
                       seed: int, rank: int, world_size: int, start_epoch: int = 0,
                       position: Optional[Mapping[str, Any]] = None) -> torch.utils.data.DataLoader:
    """``build_train_loader`` with the knobs of a ``DataConfig``."""
    return build_train_loader(train_sources(data), batch_size, transform, tokenizer, workers=data.workers,
                              shuffle_buffer=data.shuffle_buffer, seed=seed, rank=rank, world_size=world_size,
                              image_keys=data.image_keys, caption_key=data.caption_key, resampled=data.resampled,
                              num_negatives=data.num_negatives, draft=data.jpeg_draft,
                              image_views=data.image_views, text_views=data.text_views, start_epoch=start_epoch,
                              position=position)


def train_sources(data) -> ShardsArg:
    """``data.sources`` when set, else ``data.train_shards``."""
    return [{"shards": s.shards, "weight": s.weight} for s in data.sources] if data.sources else data.train_shards


def epoch_samples(shards: ShardsArg) -> int | None:
    """Samples per epoch of ``shards`` (all sources) from sizes.json / _stats.json, None when unknown."""
    return count_samples([u for s in resolve_sources(shards) for u in s.urls])
