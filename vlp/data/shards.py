"""Shard lists: resolving shard specs to URLs, weighted sources, opening any URL, counting samples.

A spec names shards as a directory (its *.tar, sorted), a brace pattern
(``dir/shard-{000000..000009}.tar``), a ``file://`` URL, a ``pipe:`` command (``pipe:cat x.tar``,
``pipe:aws s3 cp s3://b/x.tar -``) or a remote URL (``s3://``, ``gs://``, ``https://``), or several
of these joined by '::'. Remote URLs open through webdataset's ``gopen``; schemes it has no handler
for (s3, memory, az, ...) are registered there to open through fsspec.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, List, Mapping, Optional, Sequence, Union
from urllib.parse import urlparse
from urllib.request import url2pathname

import braceexpand
import webdataset as wds

wds_gopen = importlib.import_module("webdataset.gopen")


@dataclass(frozen=True)
class ShardSource:
    """One source of a training mix: its shard URLs and its sampling weight."""

    urls: tuple
    weight: float = 1.0
    spec: str = ""


def _local_path(url: str) -> Optional[str]:
    """The filesystem path of a plain path or file:// URL, else None (pipe:, remote)."""
    if url.startswith("pipe:"):
        return None
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return url2pathname(parsed.path)
    return url if parsed.scheme == "" else None


def expand_shards(spec: str) -> List[str]:
    """URLs of the shards named by ``spec`` (see the module doc); local shards must exist."""
    urls: List[str] = []
    for part in spec.split("::"):
        part = part.strip()
        if not part:
            continue
        local = _local_path(part)
        if local is not None and os.path.isdir(local):
            found = sorted(str(p) for p in Path(local).glob("*.tar"))
            if not found:
                raise FileNotFoundError(f"no .tar shards in directory {part}")
            urls.extend(found if local == part else [Path(p).resolve().as_uri() for p in found])
        else:  # a pattern, a file, a URL or a pipe: command (expanded too, as webdataset does)
            urls.extend(braceexpand.braceexpand(part))
    if not urls:
        raise FileNotFoundError(f"shard spec {spec!r} names no shards")
    missing = [u for u in urls if (p := _local_path(u)) is not None and not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) not found, first: {missing[0]}")
    return urls


SourceLike = Union[str, Mapping[str, Any], Any]


def resolve_sources(spec: Union[str, Sequence[SourceLike]]) -> List[ShardSource]:
    """Sources of a training mix from a spec string (one source, weight 1) or a list of
    {shards, weight} mappings / objects with ``shards`` and ``weight`` attributes."""
    if isinstance(spec, str):
        return [ShardSource(tuple(expand_shards(spec)), 1.0, spec)]
    sources = []
    for item in spec:
        shards = item["shards"] if isinstance(item, Mapping) else item.shards
        weight = float(item.get("weight", 1.0) if isinstance(item, Mapping) else item.weight)
        if weight <= 0:
            raise ValueError(f"source {shards!r}: weight must be > 0, got {weight}")
        sources.append(ShardSource(tuple(expand_shards(shards)), weight, shards))
    if not sources:
        raise FileNotFoundError("no shard sources given")
    return sources


def gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> IO[bytes]:
    """webdataset opener for fsspec URLs (s3://, memory://, ...)."""
    import fsspec

    return fsspec.open(url, mode).open()


def register_fsspec_schemes() -> None:
    """Let webdataset's ``gopen`` open every fsspec protocol it has no handler of its own for."""
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec ships with our dependencies
        return
    for proto in fsspec.available_protocols():
        if proto not in ("file", "local"):
            wds_gopen.gopen_schemes.setdefault(proto, gopen_fsspec)


register_fsspec_schemes()


def open_shard(url: str) -> IO[bytes]:
    """A binary stream of the shard at ``url`` (path, file://, pipe:, remote)."""
    return wds.gopen(url, "rb")


def _img2dataset_count(path: str) -> Optional[int]:
    stats = os.path.splitext(path)[0] + "_stats.json"
    if not os.path.isfile(stats):
        return None
    with open(stats) as f:
        data = json.load(f)
    return int(data["successes"]) if "successes" in data else None


def count_samples(urls: Iterable[str]) -> Optional[int]:
    """Total samples of ``urls`` from the sizes.json beside them (open_clip's format:
    {shard basename: count}) or img2dataset's ``NNNNN_stats.json`` ("successes"); None when a
    local count is missing or a shard is not local."""
    total = 0
    cache: dict[str, Optional[dict]] = {}
    for url in urls:
        path = _local_path(url)
        if path is None:
            return None
        folder = os.path.dirname(path)
        if folder not in cache:
            sizes_path = os.path.join(folder, "sizes.json")
            cache[folder] = None
            if os.path.isfile(sizes_path):
                with open(sizes_path) as f:
                    cache[folder] = json.load(f)
        sizes = cache[folder]
        name = os.path.basename(path)
        count = int(sizes[name]) if sizes is not None and name in sizes else _img2dataset_count(path)
        if count is None:
            return None
        total += count
    return total
