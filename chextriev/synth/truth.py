"""Truth files ``truth/<image_id>.npz``: region boxes and labels, and each lesion's finding,
box and mask (bit-packed). Written as a zip with fixed timestamps so the bytes depend only on
the content (``np.savez`` stamps the current time)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from chextriev.errors import DataFormatError

_EPOCH = (1980, 1, 1, 0, 0, 0)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Deterministic compressed .npz readable by ``np.load``."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


def write_truth(path: Path, *, boxes: np.ndarray, region_labels: np.ndarray, findings: list[str],
                lesion_boxes: np.ndarray, masks: np.ndarray, conditions: tuple[str, ...]) -> None:
    """boxes (18,4), region_labels (18,C), lesion_boxes (L,4), masks (L,H,W) bool."""
    shape = np.array(masks.shape, dtype=np.int64)
    save_npz(path, {
        "boxes": boxes.astype(np.float32),
        "region_labels": region_labels.astype(np.float32),
        "lesion_findings": np.array(findings, dtype="<U40"),
        "lesion_boxes": lesion_boxes.astype(np.float32).reshape(-1, 4),
        "lesion_masks_packed": np.packbits(masks.reshape(len(masks), -1), axis=1) if len(masks) else np.zeros((0, 0), np.uint8),
        "mask_shape": shape,
        "conditions": np.array(conditions, dtype="<U20"),
    })


def read_truth(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a truth file, with ``lesion_masks`` (L, H, W) bool unpacked."""
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataFormatError(f"cannot read truth file {path}: {error}") from error
    count, height, width = (int(x) for x in out["mask_shape"])
    packed = out.pop("lesion_masks_packed")
    if count:
        out["lesion_masks"] = np.unpackbits(packed, axis=1, count=height * width).astype(bool).reshape(count, height, width)
    else:
        out["lesion_masks"] = np.zeros((0, height, width), dtype=bool)
    return out
