"""``vlp-prep dedup``: near-duplicate removal over image embeddings from a trained checkpoint.

Pass 1 embeds every image of the input shards (in shard order, then tar order) with the model's
L2-normalised ``encode_image``, writing the float32 embeddings batch by batch to a temporary file
in the output folder (4 * D bytes each; read back as a memmap, removed at the end), so what stays
in memory is the search's index plus one batch. :mod:`data_prep.dedup_search` then finds the
pairs whose cosine similarity exceeds ``threshold``, exactly (faiss ``IndexFlatIP``) or, past
``IndexOptions.exact_max`` embeddings or with ``--index ivf``, with an IVF index (8-bit
scalar-quantised lists, trained on a random sample) filled and queried in batches. Going through
the samples in order, a sample is kept unless an earlier *kept* sample is its near-duplicate, so
the first of each group stays and no two kept samples are near-duplicates. Pass 2 copies the kept
samples' tar members unchanged into new shards (atomic, via ShardWriter) and writes sizes.json,
stats.json (with the index used) and duplicates.json ({removed key: kept key it duplicates}).
Samples whose image cannot be decoded are dropped and counted as ``unreadable_image``.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from data_prep.dedup_options import IndexOptions
from data_prep.dedup_search import find_near_duplicates
from data_prep.shard_writer import ShardWriter
from vlp.utils.atomic import write_json_atomic

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def shard_paths(directory: str | Path) -> list[Path]:
    """The ``*.tar`` shards of ``directory`` in name order (raises when there are none)."""
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"--shards folder not found: {directory}")
    paths = sorted(Path(directory).glob("*.tar"))
    if not paths:
        raise FileNotFoundError(f"no *.tar shards in {directory}")
    return paths


def iter_samples(paths: list[Path]) -> Iterator[dict[str, Any]]:
    """WebDataset samples as ``{"__key__": key, ext: raw bytes, ...}`` in shard and tar order."""
    for path in paths:
        current: dict[str, Any] = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    folder, _, base = member.name.rpartition("/")  # webdataset: key ends at the basename's first dot
                    stem, _, ext = base.partition(".")
                    key = f"{folder}/{stem}" if folder else stem
                    if current and current["__key__"] != key:
                        yield current
                        current = {}
                    current["__key__"] = key
                    current[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
        except (tarfile.TarError, EOFError) as err:
            raise ValueError(f"{path}: not a readable uncompressed tar shard ({err})") from None
        if current:
            yield current


def _image_bytes(sample: dict[str, Any]) -> bytes | None:
    return next((sample[e] for e in IMAGE_EXTS if e in sample), None)


def embed_shards(paths: list[Path], loaded: Any, batch_size: int = 64, device: str = "cpu",
                 progress: bool = False, spill: Path | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """(keys of decodable samples, their float32 embeddings [N, D], keys that did not decode).

    With ``spill`` the embeddings are appended to that file batch by batch and returned as a
    read-only ``np.memmap`` over it (the caller removes the file); else they are held in memory."""
    import torch

    keys: list[str] = []
    bad: list[str] = []
    chunks: list[np.ndarray] = []
    batch: list[Any] = []
    dim = [0]
    sink = open(spill, "wb") if spill is not None else None

    def flush() -> None:
        if batch:
            with torch.no_grad():
                emb = loaded.model.encode_image(torch.stack(batch).to(device))
            block = np.ascontiguousarray(emb.float().cpu().numpy(), dtype=np.float32)
            dim[0] = block.shape[1]
            if sink is not None:
                sink.write(block.tobytes())
            else:
                chunks.append(block)
            batch.clear()

    try:
        for sample in tqdm(iter_samples(paths), desc="embed", unit="img", disable=not progress):
            data = _image_bytes(sample)
            try:
                if data is None:
                    raise OSError("no image member")
                with Image.open(io.BytesIO(data)) as im:
                    batch.append(loaded.image_transform(im.convert("RGB")))
            except Exception:  # any undecodable image is counted, never fatal
                bad.append(sample["__key__"])
                continue
            keys.append(sample["__key__"])
            if len(batch) >= batch_size:
                flush()
        flush()
    finally:
        if sink is not None:
            sink.close()
    if not keys:
        return keys, np.zeros((0, 1), np.float32), bad
    if spill is not None:
        return keys, np.memmap(spill, dtype=np.float32, mode="r", shape=(len(keys), dim[0])), bad
    return keys, np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32), bad


def near_duplicates(emb: np.ndarray, threshold: float, index: IndexOptions | None = None) -> dict[int, int]:
    """{removed index: index of the earlier kept sample it duplicates} (cosine > threshold)."""
    return find_near_duplicates(emb, threshold, index)[0]


def run_dedup(shards: str | Path, model: str | Path, output: str | Path, threshold: float = 0.95, *,
              shard_samples: int = 10_000, batch_size: int = 64, device: str = "cpu",
              overwrite: bool = False, progress: bool = True, index: IndexOptions | None = None) -> dict[str, Any]:
    """Remove near-duplicates from ``shards`` into ``output``; returns the stats written."""
    from vlp.interop.vlp_files import load_model

    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    index = index or IndexOptions()
    index.validate()
    started = time.monotonic()
    paths = shard_paths(shards)
    out = Path(output)
    if out.resolve() == Path(shards).resolve():
        raise ValueError("--output must differ from --shards")
    if out.exists() and any(out.glob("*.tar")):
        if not overwrite:
            raise FileExistsError(f"{out} already holds shards; pass --overwrite to replace them")
        for old in out.glob("*.tar"):
            old.unlink()
    try:
        loaded = load_model(model, device=device)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError) as err:  # not a checkpoint of ours
        why = "not a torch checkpoint file" if isinstance(err, (pickle.UnpicklingError, EOFError)) else \
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise ValueError(f"--model {model}: cannot load it as a vlp run directory or checkpoint ({why})") from None
    out.mkdir(parents=True, exist_ok=True)
    handle, spill = tempfile.mkstemp(prefix=".dedup-embeddings-", suffix=".f32", dir=out)
    os.close(handle)
    try:
        keys, emb, bad = embed_shards(paths, loaded, batch_size, device, progress, spill=Path(spill))
        removed, plan = find_near_duplicates(emb, threshold, index, progress)
        del emb
    finally:
        Path(spill).unlink(missing_ok=True)
    drop = {keys[j] for j in removed} | set(bad)
    with ShardWriter(out, "shard-%06d.tar", max_count=shard_samples) as writer:
        for sample in iter_samples(paths):
            if sample["__key__"] not in drop:
                writer.write(sample)
    duplicates = {keys[j]: keys[i] for j, i in sorted(removed.items())}
    write_json_atomic(out / "duplicates.json", duplicates)
    stats = {
        "input_samples": len(keys) + len(bad),
        "samples_written": writer.total,
        "near_duplicates_removed": len(removed),
        "skipped": {"unreadable_image": len(bad)} if bad else {},
        "threshold": threshold,
        "index": plan.to_dict(),
        "model": str(loaded.name),
        "shards": len(writer.sizes),
        "bytes": sum((out / name).stat().st_size for name in writer.sizes),
        "seconds": round(time.monotonic() - started, 3),
    }
    write_json_atomic(out / "stats.json", stats)
    return stats
