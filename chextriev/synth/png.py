"""A minimal, fast, deterministic grayscale PNG writer (8- or 16-bit, no filter, zlib level 1).

Pillow's encoder tries adaptive filters and is several times slower on noisy radiographs;
this one writes only IHDR, IDAT and IEND (no timestamps), which every PNG reader accepts.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(pixels: np.ndarray, level: int = 1) -> bytes:
    """PNG bytes of a (H, W) uint8 or uint16 array (grayscale)."""
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"need a (H, W) uint8 or uint16 array, got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape
    depth = 8 if pixels.dtype == np.uint8 else 16
    rows = pixels.astype(">u2", copy=False) if depth == 16 else pixels
    raw = np.empty((height, 1 + width * (depth // 8)), dtype=np.uint8)
    raw[:, 0] = 0  # filter type None on every row
    raw[:, 1:] = np.ascontiguousarray(rows).view(np.uint8).reshape(height, -1)
    header = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + _chunk(b"IEND", b""))


def write_png(path: Path, pixels: np.ndarray) -> None:
    Path(path).write_bytes(encode_png(pixels))
