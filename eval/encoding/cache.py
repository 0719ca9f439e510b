"""On-disk embedding cache keyed by model and dataset *content*, shared by every eval task.

An entry is one ``torch.save`` file under ``ROOT/ab/<key>.pt`` written atomically; its key is a
BLAKE2b digest of what determines the payload:

* a dataset's content digest covers the bytes of every file it reads (shards, CSV/JSON, images,
  class names, templates). File digests (SHA-256) are memoised in ``ROOT/file_digests.sha256.json``
  by (absolute path, size, mtime_ns), so a warm run stats the files instead of reading them again.
* a model's fingerprint covers either the files it was loaded from plus the load options
  (:func:`files_fingerprint`), or, for a model in memory, every parameter and buffer's bytes plus
  a probe of its tokenizer and image transform (:func:`model_fingerprint`).

Zero-shot classification and retrieval over the same folder therefore encode its images once.
A corrupt or unreadable entry is treated as a miss (and logged), never as an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from vlp.utils.atomic import write_text_atomic

log = logging.getLogger(__name__)

CACHE_VERSION = "2"  # bump when the layout or an encoding rule changes
_READ_BLOCK = 1 << 26  # large blocks: hashing a checkpoint takes the GIL back rarely
DIGEST_MEMO = "file_digests.sha256.json"  # named by the file-digest algorithm: a change starts a new memo


def default_cache_dir() -> Path:
    """``$VLP_CACHE_DIR``, else ``$XDG_CACHE_HOME/vlp/eval`` (``~/.cache/vlp/eval``)."""
    if os.environ.get("VLP_CACHE_DIR"):
        return Path(os.environ["VLP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vlp" / "eval"


def digest_bytes(*parts: bytes | str) -> str:
    """Hex BLAKE2b-160 of the parts, each length-prefixed (no ambiguity between splits)."""
    h = hashlib.blake2b(digest_size=20)
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _file_content_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (hardware-accelerated where the CPU has SHA extensions: about
    twice blake2b's speed on a checkpoint), read into one reused buffer."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(max(1 << 20, min(_READ_BLOCK, os.fstat(f.fileno()).st_size)))
        view = memoryview(buffer)
        while size := f.readinto(buffer):
            h.update(view[:size])
    return h.hexdigest()


class EmbeddingCache:
    """Payload store under ``root`` (``root=None``: a disabled cache that never hits or writes)."""

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = Path(root) if root is not None else None
        self._digests: dict[str, list[Any]] = {}
        self._digests_dirty = False
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            memo = self.root / DIGEST_MEMO
            if memo.is_file():
                try:
                    self._digests = json.loads(memo.read_text(encoding="utf-8"))
                except (ValueError, OSError) as exn:
                    log.warning("ignoring unreadable %s: %s", memo, exn)

    @property
    def enabled(self) -> bool:
        return self.root is not None

    # ---------------------------------------------------------------- content digests
    def _memo(self, path: Path) -> tuple[list[int], Optional[str]]:
        """(the file's size and mtime, its memoised digest while they are unchanged, else None)."""
        stat = path.stat()
        sig = [stat.st_size, stat.st_mtime_ns]
        with self._lock:
            memo = self._digests.get(str(path))
        return sig, (memo[2] if memo is not None and memo[:2] == sig else None)

    def file_digest(self, path: str | os.PathLike[str]) -> str:
        """Digest of one file's bytes; reused while its size and mtime are unchanged."""
        path = Path(path).resolve()
        sig, digest = self._memo(path)
        if digest is not None:
            return digest
        digest = _file_content_digest(path)
        with self._lock:
            self._digests[str(path)] = sig + [digest]
            self._digests_dirty = True
        return digest

    def knows_digest(self, path: str | os.PathLike[str]) -> bool:
        """True when :meth:`file_digest` would answer from its memo (size and mtime unchanged)."""
        return self._memo(Path(path).resolve())[1] is not None

    def files_digest(self, paths: Iterable[str | os.PathLike[str]]) -> str:
        """Digest of several files: their names relative to their common folder and contents."""
        resolved = sorted(Path(p).resolve() for p in paths)
        if not resolved:
            return digest_bytes("no-files")
        common = Path(os.path.commonpath([str(p) for p in resolved]))
        if len(resolved) == 1:
            common = resolved[0].parent
        parts: list[str] = []
        for path in resolved:
            parts += [str(path.relative_to(common)), self.file_digest(path)]
        return digest_bytes(*parts)

    def flush_digests(self) -> None:
        """Write the file-digest memo (atomically) if it changed."""
        if self.root is None or not self._digests_dirty:
            return
        with self._lock:
            text = json.dumps(self._digests)
            self._digests_dirty = False
        write_text_atomic(self.root / DIGEST_MEMO, text)

    # ---------------------------------------------------------------- payloads
    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.pt"

    def load(self, key: str) -> Optional[dict[str, Any]]:
        """The payload stored under ``key``, or None (disabled cache, miss, unreadable entry)."""
        if self.root is None:
            return None
        path = self._path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exn:  # noqa: BLE001 - a damaged entry is a miss, not a failure
            log.warning("ignoring unreadable cache entry %s: %s", path, exn)
            self.misses += 1
            return None
        if not isinstance(payload, dict) or payload.get("version") != CACHE_VERSION:
            self.misses += 1
            return None
        self.hits += 1
        return payload

    def save(self, key: str, payload: dict[str, Any]) -> None:
        """Store ``payload`` (tensors, lists, str, numbers) under ``key``; atomic rename."""
        if self.root is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({**payload, "version": CACHE_VERSION}, tmp)
        os.replace(tmp, path)
        self.flush_digests()


# -------------------------------------------------------------------- fingerprints
_PROBE_TEXTS = ["a photo of a dog.", "", "UPPER lower 123 !?", "a " * 200, "caf\u00e9 \u65e5\u672c"]


def _probe_image() -> Any:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (53, 71, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """Digest of named tensors: names, dtypes, shapes and bytes (in name order)."""
    h = hashlib.blake2b(digest_size=20)
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def preprocessing_digest(tokenizer: Any, image_transform: Any) -> str:
    """Digest of what the tokenizer and image transform *do* on fixed probes."""
    ids = tokenizer(_PROBE_TEXTS)
    pixels = image_transform(_probe_image())
    return tensor_digest({"ids": torch.as_tensor(ids), "pixels": torch.as_tensor(pixels)})


def model_fingerprint(loaded: Any) -> str:
    """Fingerprint of an in-memory model bundle: weights, tokenizer and transform behaviour.

    A ``fingerprint`` attribute on the bundle (set by file-based loading) wins.
    """
    given = getattr(loaded, "fingerprint", None)
    if given:
        return str(given)
    state = dict(loaded.model.state_dict())
    return digest_bytes("model", tensor_digest(state), preprocessing_digest(loaded.tokenizer, loaded.image_transform))


def files_fingerprint(cache: EmbeddingCache, files: Iterable[str | os.PathLike[str]], options: str) -> str:
    """Fingerprint of a model loaded from ``files`` with load ``options`` (no need to load it)."""
    return digest_bytes("model-files", cache.files_digest(files), options)
