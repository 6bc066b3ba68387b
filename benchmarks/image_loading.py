"""Image-loading throughput by source format: ``python -m benchmarks image_loading [--n 40] [--size 512]``.

Writes ``n`` images of each kind (PNG L, PNG RGBA, PNG 16-bit, JPEG, DICOM MONOCHROME1 12-bit
windowed, DICOM RLE) into a temporary folder, times :func:`load_image` on each, and times
:func:`image_size` (header only) against a full decode. Prints one line per kind with ms/image
and the ratio to PNG L (alternatives compared in one run, the machine being shared).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.harness import machine_line


def _write_all(folder: Path, n: int, size: int) -> dict[str, list[Path]]:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        RLELossless,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    kinds: dict[str, list[Path]] = {
        k: [] for k in ("png-L", "png-RGBA", "png-16", "jpeg", "dicom-12bit", "dicom-rle")
    }
    for i in range(n):
        base = (np.sin(xx / (7 + i)) * np.cos(yy / 11) + 1) / 2 + rng.normal(0, 0.05, (size, size))
        u8 = (np.clip(base, 0, 1) * 255).astype(np.uint8)
        u12 = (np.clip(base, 0, 1) * 4095).astype(np.uint16)
        paths = {k: folder / f"{k}_{i}" for k in kinds}
        Image.fromarray(u8, "L").save(paths["png-L"], format="PNG")
        Image.fromarray(u8, "L").convert("RGBA").save(paths["png-RGBA"], format="PNG")
        Image.fromarray((u12.astype(np.uint32) * 16).astype(np.uint16)).save(
            paths["png-16"], format="PNG"
        )
        Image.fromarray(u8, "L").save(paths["jpeg"], format="JPEG", quality=90)
        for kind in ("dicom-12bit", "dicom-rle"):
            meta = FileMetaDataset()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = (
                SecondaryCaptureImageStorage,
                meta.MediaStorageSOPInstanceUID,
            )
            ds.Rows = ds.Columns = size
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.WindowCenter, ds.WindowWidth = 2048, 3000
            ds.PixelData = (4095 - u12).astype("<u2").tobytes()
            if kind == "dicom-rle":
                ds.compress(RLELossless)
            ds.save_as(paths[kind], enforce_file_format=True)
        for k, p in paths.items():
            kinds[k].append(p)
    return kinds


def run(n: int = 40, size: int = 512) -> list[tuple[str, float]]:
    """``[(kind, ms per image)]`` for each source kind and for the header-only size read."""
    from chextriev.io.images import image_size, load_image

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        kinds = _write_all(Path(tmp), n, size)
        for kind, paths in kinds.items():
            load_image(paths[0])  # warm-up
            t0 = time.perf_counter()
            for p in paths:
                load_image(p)
            rows.append((kind, (time.perf_counter() - t0) * 1000 / len(paths)))
        t0 = time.perf_counter()
        for p in kinds["png-L"]:
            image_size(p)
        rows.append(("png-L image_size (header only)", (time.perf_counter() - t0) * 1000 / n))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="images per kind")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    args = parser.parse_args(argv)
    rows = run(args.n, args.size)
    ref = rows[0][1]
    print(f"machine: {machine_line()}")
    print(f"load_image, {args.n} images of {args.size}x{args.size} per kind")
    for kind, ms in rows:
        print(f"{kind:32s} {ms:8.2f} ms/image   x{ms / ref:5.2f} vs png-L")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
