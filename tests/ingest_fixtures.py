"""Tiny image/caption fixtures shared by the ingest and dedup tests (built in tmp_path)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(seed: int, size: tuple[int, int] = (32, 24), fmt: str = "JPEG") -> bytes:
    """A noise image (distinct per seed) encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, fmt, quality=90) if fmt == "JPEG" else Image.fromarray(arr).save(buffer, fmt)
    return buffer.getvalue()


def write_image(path: Path, seed: int, size: tuple[int, int] = (32, 24), fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(seed, size, fmt))
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_bomb_png(path: Path, side: int = 20000) -> Path:
    """A valid ``side`` x ``side`` 1-bit greyscale PNG (all black), ~50 KB on disk for 20000 px:
    the rows are zeros, so zlib squeezes 50 MB of pixel data into very little, streamed 1000 rows
    at a time so the test never holds the raw image."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    parts = []
    for start in range(0, side, 1000):
        parts.append(compressor.compress(row * min(1000, side - start)))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


def write_truncated_jpeg(path: Path, seed: int = 999) -> Path:
    """A JPEG cut to 60% of its bytes: the header opens, the pixel data ends early."""
    data = image_bytes(seed, (64, 64))
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path
