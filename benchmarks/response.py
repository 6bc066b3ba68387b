"""The stages of an upload search in the server, the response stage apart: the median
``timing_ms`` of every stage (decode, model, search, response, total) over uploads of two sizes,
in process (Flask's test client: no HTTP, no other client), and the search against the response.

    python -m benchmarks response --work /tmp/bench-response --uploads 12
    python -m benchmarks response --checkpoint v6.ckpt --index-dir idx --queries q1.png q2.png

The response stage is what an upload costs after the search: the catalog rows of the results,
their region embeddings and match explanation, the result tiles, and the query preview (the
upload as a grey JPEG ``data:`` URL, at most 1024 px). Each query image is sent at its own size
and enlarged to ``--large`` px on the long side (a radiograph's usual size: the preview is then
a shrink + encode of 4x the pixels). Without ``--checkpoint``/``--index-dir`` the fixtures are
made in ``--work``: a synthetic archive at 512 px, the default architecture with random weights
(``benchmarks.harness.default_checkpoint``) and an index of ``--index-images`` of its images.

Run it with ``PYTHONPATH`` at another checkout to measure that code's server on the same files
(copy this file into its ``benchmarks/``), alternating the two for a before/after.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import machine_line

STAGES = ("decode", "model", "search", "response", "total")


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.clip(pixels, 0, 1) * 65535).astype(np.uint16)).save(buffer, "PNG")
    return buffer.getvalue()


def query_uploads(paths: list[Path], large: int) -> dict[str, list[bytes]]:
    """Each query file as it is, and enlarged to ``large`` px on the long side (16-bit PNG)."""
    from PIL import Image

    from chextriev.io.images import load_image

    native, enlarged = [], []
    for path in paths:
        native.append(path.read_bytes())
        pixels = load_image(path)
        h, w = pixels.shape
        scale = large / max(h, w)
        image = Image.fromarray(pixels).resize((round(w * scale), round(h * scale)), Image.BILINEAR)
        enlarged.append(_png(np.asarray(image, np.float32)))
    side = max(load_image(paths[0]).shape)
    return {f"{side} px": native, f"{large} px": enlarged}


def fixtures(args) -> tuple[Path, Path, list[Path]]:
    if args.checkpoint and args.index_dir:
        if not args.queries:
            raise SystemExit("--queries: the query images (not indexed) to upload")
        return Path(args.checkpoint), Path(args.index_dir), [Path(q) for q in args.queries]
    from benchmarks.defaults import prepare

    made = prepare(Path(args.work), args.patients, args.index_images, args.query_images, fit_images=16)
    return made["checkpoint"], made["index_dir"], list(made["queries"])


def measure(client, uploads: dict[str, list[bytes]], count: int, k: int) -> dict[str, list[dict]]:
    """``count`` uploads of each size, the sizes alternated; the ``timing_ms`` of each."""
    out: dict[str, list[dict]] = {name: [] for name in uploads}
    for i in range(count):
        for name, datas in uploads.items():
            data = datas[i % len(datas)]
            response = client.post("/api/v1/search", data={"image": (io.BytesIO(data), "q.png"), "k": str(k)},
                                   content_type="multipart/form-data")
            if response.status_code != 200:
                raise SystemExit(f"upload failed: {response.status_code} {response.data[:500]!r}")
            out[name].append(response.get_json()["timing_ms"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/bench-response", help="folder of the fixtures made here")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--index-dir", default=None)
    parser.add_argument("--queries", nargs="*", default=None, help="query images (with --checkpoint)")
    parser.add_argument("--patients", type=int, default=40, help="synthetic archive size (made fixtures)")
    parser.add_argument("--index-images", type=int, default=100)
    parser.add_argument("--query-images", type=int, default=6)
    parser.add_argument("--uploads", type=int, default=12, help="uploads of each size")
    parser.add_argument("--warm-up", type=int, default=2)
    parser.add_argument("--large", type=int, default=2048, help="long side of the enlarged uploads")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--label", default="this checkout", help="the code's name in the output")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)
    checkpoint, index_dir, queries = fixtures(args)
    uploads = query_uploads(queries, args.large)

    from server import create_app

    app = create_app({"CHECKPOINT": str(checkpoint), "INDEX_DIR": str(index_dir), "LOAD": "sync",
                      "COMPILE": "off", "PRECISION": args.precision, "TORCH_THREADS": args.torch_threads,
                      "CONFIG_FILE": None})
    client = app.test_client()
    measure(client, uploads, args.warm_up, args.k)
    started = time.perf_counter()
    timings = measure(client, uploads, args.uploads, args.k)
    print(f"machine: {machine_line()}")
    print(f"code: {args.label}; index {index_dir} ({app.extensions['chextriev'].size} images); k={args.k}; "
          f"{args.uploads} uploads per size in {time.perf_counter() - started:.0f} s; eager {args.precision}")
    print("| code | upload | " + " | ".join(f"{s} ms" for s in STAGES) + " | response / search |")
    print("|---|---|" + "---|" * (len(STAGES) + 1))
    result = {"label": args.label, "machine": machine_line(), "rows": {}}
    for name, rows in timings.items():
        medians = {s: statistics.median(r.get(s, 0.0) for r in rows) for s in STAGES}
        result["rows"][name] = medians
        ratio = medians["response"] / max(medians["search"], 1e-9)
        print(f"| {args.label} | {name} | " + " | ".join(f"{medians[s]:.1f}" for s in STAGES) + f" | {ratio:.2f} |")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
