"""Shard lists: resolving a shard spec to URLs and counting samples from sizes.json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import braceexpand


def expand_shards(spec: str) -> List[str]:
    """URLs of the shards named by ``spec``: a directory (its *.tar, sorted), a brace pattern
    (``dir/shard-{000000..000009}.tar``), or several of these joined by '::'."""
    urls: List[str] = []
    for part in spec.split("::"):
        part = part.strip()
        if not part:
            continue
        if os.path.isdir(part):
            found = sorted(str(p) for p in Path(part).glob("*.tar"))
            if not found:
                raise FileNotFoundError(f"no .tar shards in directory {part}")
            urls.extend(found)
        else:
            urls.extend(braceexpand.braceexpand(part))
    if not urls:
        raise FileNotFoundError(f"shard spec {spec!r} names no shards")
    local_missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not os.path.exists(u)]
    if local_missing:
        raise FileNotFoundError(f"{len(local_missing)} shard(s) not found, first: {local_missing[0]}")
    return urls


def count_samples(urls: List[str]) -> Optional[int]:
    """Total samples of ``urls`` from the sizes.json beside them (open_clip's format:
    {shard basename: count}); None when a sizes.json is missing or lacks a shard."""
    total = 0
    cache: dict[str, dict] = {}
    for url in urls:
        folder = os.path.dirname(url)
        if folder not in cache:
            sizes_path = os.path.join(folder, "sizes.json")
            if not os.path.isfile(sizes_path):
                return None
            with open(sizes_path) as f:
                cache[folder] = json.load(f)
        name = os.path.basename(url)
        if name not in cache[folder]:
            return None
        total += int(cache[folder][name])
    return total
