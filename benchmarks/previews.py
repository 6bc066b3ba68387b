"""Bytes and encoding time of the stored previews (``chextriev index --preview-side``), made by
the indexer's own decoding path (:func:`indexer.decode.decode`, which calls
:func:`chextriev.io.pixels.encode_preview`) on every image of an archive; prints per-image
figures and the cost per million images. JPEG (what the indexer stores) is compared with WebP
at the same side, interleaved per image.

    python -m benchmarks previews ../shared/data/nih-sample --side 1024
    python -m benchmarks previews /tmp/synth-2048 --side 1024 --limit 60
    python -m benchmarks previews ../shared/data/nih-sample --limit 60 --query-preview

``--query-preview`` compares, instead, the two encodings of the query preview an upload search
returns, from each original image (interleaved per image): the lossless PNG it used to be
(:func:`png_bytes`, the server's encoder until then) and the archive previews' JPEG it is now
(``chextriev.io.pixels.encode_preview``).
"""

from __future__ import annotations

import argparse
import io
import sys
import time

import numpy as np
from PIL import Image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="anything `chextriev index --data` reads")
    parser.add_argument("--side", type=int, default=1024, help="--preview-side (default 1024)")
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    parser.add_argument("--query-preview", action="store_true", help="PNG vs JPEG of the upload query preview")
    args = parser.parse_args(argv)
    if args.query_preview:
        compare_query_previews(args.source, args.side, args.limit)
        return 0

    from chextriev.io.pixels import PREVIEW_QUALITY
    from indexer.decode import OK, decode
    from indexer.discovery import open_archive

    sizes, jpeg_ms, webp_sizes, webp_ms, sides = [], [], [], [], []
    for n, record in enumerate(open_archive(args.source).iter_records()):
        if args.limit and n >= args.limit:
            break
        started = time.perf_counter()
        without = decode(record, 512, preview_side=0)
        plain = time.perf_counter() - started
        started = time.perf_counter()
        decoded = decode(record, 512, preview_side=args.side)
        with_preview = time.perf_counter() - started
        if decoded.status != OK or decoded.preview is None or without.status != OK:
            continue
        sizes.append(len(decoded.preview))
        jpeg_ms.append(1000 * max(0.0, with_preview - plain))
        with Image.open(io.BytesIO(decoded.preview)) as image:
            sides.append(max(image.size))
            grey = image.convert("L")
        buffer = io.BytesIO()
        started = time.perf_counter()
        grey.save(buffer, format="WEBP", quality=80, method=4)
        webp_ms.append(1000 * (time.perf_counter() - started))
        webp_sizes.append(len(buffer.getvalue()))
    sizes, webp_sizes = np.array(sizes), np.array(webp_sizes)
    print(f"{len(sizes)} images from {args.source}; previews {min(sides)}..{max(sides)} px on the "
          f"long side (--preview-side {args.side}; never enlarged)")
    print(f"JPEG q{PREVIEW_QUALITY} (stored): mean {sizes.mean() / 1e3:.1f} kB, median "
          f"{np.median(sizes) / 1e3:.1f} kB, p95 {np.percentile(sizes, 95) / 1e3:.1f} kB; "
          f"{sizes.mean() * 1e6 / 1e9:.1f} GB per million images; extra decode time per image "
          f"(median, decode with vs without the preview) {np.median(jpeg_ms):.1f} ms")
    ratio = webp_sizes.mean() / sizes.mean()
    print(f"WebP q80 (compared): mean {webp_sizes.mean() / 1e3:.1f} kB ({ratio:.2f}x the JPEG), "
          f"encode median {np.median(webp_ms):.1f} ms")


def png_bytes(pixels: np.ndarray, max_side: int) -> bytes:
    """The upload query preview as the server encoded it before: 8-bit grey PNG, shrunk to
    ``max_side`` if larger."""
    image = Image.fromarray(np.clip(np.asarray(pixels) * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def compare_query_previews(source: str, side: int, limit: int) -> None:
    from chextriev.io.images import load_image
    from chextriev.io.pixels import PREVIEW_QUALITY, encode_preview
    from indexer.discovery import open_archive

    figures: dict[str, tuple[list[float], list[int]]] = {"PNG": ([], []), f"JPEG q{PREVIEW_QUALITY}": ([], [])}
    encoders = {"PNG": lambda p: png_bytes(p, side), f"JPEG q{PREVIEW_QUALITY}": lambda p: encode_preview(p, side)}
    shapes = []
    for n, record in enumerate(open_archive(source).iter_records()):
        if limit and n >= limit:
            break
        pixels = load_image(record.source)
        shapes.append(max(pixels.shape))
        for name, encode in encoders.items():
            started = time.perf_counter()
            data = encode(pixels)
            figures[name][0].append(1000 * (time.perf_counter() - started))
            figures[name][1].append(len(data))
    print(f"{len(shapes)} images from {source}, {min(shapes)}..{max(shapes)} px on the long side; "
          f"query preview at most {side} px")
    for name, (ms, sizes) in figures.items():
        print(f"{name}: encode median {np.median(ms):.1f} ms, mean {np.mean(sizes) / 1e3:.1f} kB "
              f"({np.mean(sizes) * 4 / 3 / 1e3:.1f} kB as base64 in the response)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
