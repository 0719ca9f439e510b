"""Atomic WebDataset shard writing.

Every file this module produces is first written under a hidden temporary name in its
final directory and renamed (``os.replace``) to its final name only once it is complete,
so a crash never leaves a file with a final name that a reader could take for whole.
Temporary names start with ``.`` and end with ``.tmp``: they never match ``*.tar``.

Samples are written with the standard library's tarfile (:class:`SampleTarWriter`), member for
member as webdataset's TarWriter writes them (``key.ext`` sorted by extension, fixed mtime, mode,
user and group): importing webdataset imports torch, about 500 MB and 1.5 s in every ingest
worker process for nothing.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Iterable, Mapping

from vlp.utils.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic

# Constant tar member mtime (2020-01-01T00:00:00Z): TarWriter would otherwise stamp the
# current time into every member header and shards would not be byte-identical across runs.
FIXED_MTIME: float = 1577836800.0

SIZES_NAME = "sizes.json"


def _open_temp(directory: Path, final_name: str) -> tuple[IO[bytes], Path]:
    """Open a new hidden temporary file in ``directory`` for the file ``final_name``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final_name}.", suffix=".tmp", dir=directory)
    return os.fdopen(fd, "wb"), Path(tmp)


def _commit(handle: IO[bytes], tmp: Path, final: Path) -> None:
    """Flush and fsync ``handle``, close it and rename ``tmp`` onto ``final``."""
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    os.chmod(tmp, 0o644)
    os.replace(tmp, final)


def write_sizes_json(directory: str | os.PathLike[str], sizes: Mapping[str, int]) -> Path:
    """Write open_clip's ``sizes.json`` ({shard file name: sample count}) atomically."""
    path = Path(directory) / SIZES_NAME
    write_json_atomic(path, {name: int(n) for name, n in sorted(sizes.items())})
    return path


def encode_json(obj: Any) -> bytes:
    """Compact, deterministic JSON bytes for a sample's ``json`` field."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _member_bytes(ext: str, value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value).encode("utf-8")
    if isinstance(value, (dict, list)) and ext == "json":
        return json.dumps(value).encode("utf-8")
    raise TypeError(f"sample field {ext!r}: cannot store a {type(value).__name__} (give bytes, str, a number, "
                    "or a dict/list for 'json')")


class SampleTarWriter:
    """WebDataset samples ({'__key__': KEY, EXT: value, ...}) as tar members ``KEY.EXT`` in a stream."""

    def __init__(self, handle: IO[bytes], *, mtime: float, mode: int = 0o644, user: str = "vlp",
                 group: str = "vlp") -> None:
        self.tar = tarfile.open(fileobj=handle, mode="w|")
        self.mtime, self.mode, self.user, self.group = mtime, mode, user, group

    def write(self, sample: Mapping[str, Any]) -> int:
        """Append one sample; returns the bytes of its members' data."""
        key = str(sample["__key__"])
        total = 0
        for ext in sorted(k for k in sample if not k.startswith("_")):
            data = _member_bytes(ext, sample[ext])
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), self.mtime, self.mode, self.user, self.group
            self.tar.addfile(info, io.BytesIO(data))
            total += len(data)
        return total

    def close(self) -> None:
        self.tar.close()


class ShardWriter:
    """Write WebDataset samples into shards of at most ``max_count`` samples, atomically.

    Samples are dicts such as ``{"__key__": "000001", "jpg": b"...", "txt": "a caption",
    "json": {...}}``; bytes pass through, str is UTF-8, numbers (``cls``) their text, a dict or
    list under ``json`` its JSON. Shards are named ``pattern % index``
    starting at ``start_index``; each is renamed into place only once closed. On a clean
    exit ``sizes.json`` (unless ``sizes_name`` is None) is written atomically; on an
    exception the open shard's temporary file is deleted and no sizes file is written.

    Use ``start_index`` with ``sizes_name=None`` to write one shard per worker process and
    let the parent call :func:`write_sizes_json` with the merged :attr:`sizes`.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        pattern: str = "shard-%06d.tar",
        max_count: int = 10_000,
        *,
        max_bytes: int | None = None,
        start_index: int = 0,
        sizes_name: str | None = SIZES_NAME,
        mtime: float = FIXED_MTIME,
    ) -> None:
        if max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        if "%" not in pattern:
            raise ValueError(f"pattern must contain a %-format index such as %06d, got {pattern!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pattern = pattern
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.sizes_name = sizes_name
        self.mtime = mtime
        self.next_index = start_index
        self.sizes: dict[str, int] = {}
        self._handle: IO[bytes] | None = None
        self._tmp: Path | None = None
        self._tar: SampleTarWriter | None = None
        self._name = ""
        self._count = 0
        self._bytes = 0
        self._closed = False

    # -- shard lifecycle -------------------------------------------------------------
    def _start_shard(self) -> None:
        self._name = self.pattern % self.next_index
        self.next_index += 1
        self._handle, self._tmp = _open_temp(self.directory, self._name)
        self._tar = SampleTarWriter(self._handle, mtime=self.mtime)
        self._count = 0
        self._bytes = 0

    def _finish_shard(self) -> None:
        assert self._tar is not None and self._handle is not None and self._tmp is not None
        self._tar.close()
        _commit(self._handle, self._tmp, self.directory / self._name)
        self.sizes[self._name] = self._count
        self._tar = self._handle = self._tmp = None

    def _abort_shard(self) -> None:
        if self._tar is not None:
            try:
                self._tar.close()
            except Exception:  # the tar is discarded anyway
                pass
        if self._handle is not None:
            self._handle.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._tar = self._handle = self._tmp = None

    # -- public API ------------------------------------------------------------------
    def write(self, sample: Mapping[str, Any]) -> None:
        """Append one sample, starting a new shard when the current one is full."""
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        if "__key__" not in sample:
            raise ValueError("sample must contain a __key__")
        if self._tar is None:
            self._start_shard()
        assert self._tar is not None
        self._bytes += self._tar.write(dict(sample))
        self._count += 1
        full = self._count >= self.max_count
        if self.max_bytes is not None and self._bytes >= self.max_bytes:
            full = True
        if full:
            self._finish_shard()

    def end_shard(self) -> None:
        """Finish the open shard now (the next sample starts a new one); nothing when none is open."""
        if self._tar is not None:
            self._finish_shard()

    def write_all(self, samples: Iterable[Mapping[str, Any]]) -> None:
        """Write every sample of an iterable."""
        for sample in samples:
            self.write(sample)

    def close(self) -> None:
        """Finish the open shard and write the sizes file."""
        if self._closed:
            return
        if self._tar is not None:
            self._finish_shard()
        if self.sizes_name is not None:
            write_json_atomic(self.directory / self.sizes_name, dict(sorted(self.sizes.items())))
        self._closed = True

    def abort(self) -> None:
        """Discard the open shard; shards already finished stay (they are complete)."""
        self._abort_shard()
        self._closed = True

    @property
    def shard_names(self) -> list[str]:
        """Names of the shards finished so far, in write order."""
        return list(self.sizes)

    @property
    def total(self) -> int:
        """Samples in finished shards."""
        return sum(self.sizes.values())

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_tar_members(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """Read every member of a tar into {member name: bytes} (for tests and checks)."""
    import tarfile

    out: dict[str, bytes] = {}
    with tarfile.open(path, "r") as tar:
        for member in tar.getmembers():
            f = tar.extractfile(member)
            if f is not None:
                out[member.name] = f.read()
    return out


__all__ = [
    "FIXED_MTIME",
    "SIZES_NAME",
    "ShardWriter",
    "encode_json",
    "read_tar_members",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_sizes_json",
    "write_text_atomic",
]
