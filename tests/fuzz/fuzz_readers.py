"""Property-based fuzzing of the image readers (``chextriev.io.images.read_image``) with
Hypothesis, from mutated real files: run as its own process by ``test_fuzz_readers.py`` (so
that a crash in a C decoder, a hang or a runaway allocation is seen as such and cannot take
pytest down) and usable by hand::

    python tests/fuzz/fuzz_readers.py dicom --examples 2000 --seed 7 --out /tmp/fuzz

The property, for every input: ``read_image`` returns a C-contiguous float32 ``(H, W)`` array
in ``[0, 1]`` with no NaN or infinity, or raises ``ImageReadError``; nothing else, within a
per-example deadline, and the process's peak memory stays within a bound.

Seeds (real files, mutated): ``png``: NIH ChestX-ray14 sample PNGs (``CHEXTRIEV_NIH_SAMPLE``)
and small PNGs in every mode the reader handles; ``jpeg``: NIH images re-encoded as baseline
and progressive JPEG (grey and RGB, with EXIF orientation); ``dicom``: pydicom's bundled image
files (uncompressed, big endian, deflated, RLE, JPEG baseline / extended / lossless, JPEG-LS,
JPEG 2000, palette, YBR, multi-frame) and synthetic DICOMs of ``chextriev synth``; half of the
DICOM examples first get image fields (Rows, NumberOfFrames, BitsAllocated, RescaleSlope, the
transfer syntax, ...) set to hostile values through pydicom, so that they reach the pixel path.
Mutations (PNG chunk CRCs then rewritten, most of the time, so that the mutation reaches the
decoder): byte flips, interesting integers (0, 1, 0x7F.., 0xFF.., both byte orders) written
over 1, 2 or 4 bytes, deletions, duplications, insertions and truncation, half of them aimed
at the first 2 kB where the headers are.

Writes ``summary.json`` (and each failing input as ``failure-N.bin``) into ``--out``; exits 1
when the property failed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import signal
import struct
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

HEADER_ZONE = 2048
INTERESTING = (0, 1, 2, 7, 8, 16, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF,
               0x80000000, 0xFFFFFFFF, 4096, 65535, 60000)
#: The per-frame pixel limit used while fuzzing (a mutated size stays cheap to refuse).
FUZZ_MAX_PIXELS = 16 * 1024 * 1024


class Hang(BaseException):
    """One example ran past its hard time limit (BaseException: no reader may swallow it)."""


# --------------------------------------------------------------------------------------- seeds
def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, "PNG")
    return buffer.getvalue()


def png_seeds(nih: Path | None) -> list[bytes]:
    from PIL import Image

    ramp = np.linspace(0, 255, 48 * 40).reshape(40, 48).astype(np.uint8)
    seeds = [_png(ramp), _png(ramp.astype(np.uint16) * 257),
             _png(np.stack([ramp, ramp[::-1], ramp], -1)),
             _png(np.dstack([ramp, ramp]), "LA")]
    palette = Image.fromarray(ramp).convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, "PNG")
    seeds.append(buffer.getvalue())
    if nih is not None:
        for path in sorted((nih / "images").glob("*.png"), key=lambda p: p.stat().st_size)[:2]:
            seeds.append(path.read_bytes())
    return seeds


def jpeg_seeds(nih: Path | None) -> list[bytes]:
    from PIL import Image

    if nih is not None:
        path = min((nih / "images").glob("*.png"), key=lambda p: p.stat().st_size)
        base = Image.open(path).convert("L").resize((256, 256))
    else:
        base = Image.fromarray(np.linspace(0, 255, 256 * 256).reshape(256, 256).astype(np.uint8))
    seeds = []
    for image, options in ((base, {}), (base, {"progressive": True}),
                           (base.convert("RGB"), {"quality": 70}), (base.resize((64, 64)), {})):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", **options)
        seeds.append(buffer.getvalue())
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    buffer = io.BytesIO()
    base.resize((64, 48)).save(buffer, "JPEG", exif=exif.tobytes())
    seeds.append(buffer.getvalue())
    return seeds


#: pydicom's bundled image files used as seeds (small; every syntax the reader decodes).
PYDICOM_FILES = (
    "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "image_dfl.dcm",
    "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_small_odd.dcm",
    "SC_ybr_full_422_uncompressed.dcm", "JPEGLSNearLossless_08.dcm", "examples_palette.dcm",
    "CT_small.dcm", "rtdose_1frame.dcm", "liver_1frame.dcm",
)


def dicom_seeds() -> list[bytes]:
    from pydicom.data import get_testdata_file

    from chextriev.synth.dicom_out import write_dicom

    seeds = []
    for name in PYDICOM_FILES:
        path = get_testdata_file(name, download=False)
        if path is not None:
            seeds.append(Path(path).read_bytes())
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"fuzz-synth-{os.getpid()}.dcm"
    rng = np.random.default_rng(0)
    for monochrome1 in (False, True):
        write_dicom(tmp, rng.random((48, 40)).astype(np.float32), patient_id="FUZZ", study_uid="1.2.3",
                    series_uid="1.2.3.4", sop_uid=f"1.2.3.4.{int(monochrome1)}", view="PA",
                    study_date="20240102", sex="F", age=50, monochrome1=monochrome1, intercept=-1024,
                    modality="DX", study_id="S1", accession="A1")
        seeds.append(tmp.read_bytes())
    tmp.unlink(missing_ok=True)
    return seeds


# ----------------------------------------------------------------------------------- mutations
#: DICOM image fields set to hostile values by :func:`dicom_fields` (tag keyword -> values).
DICOM_FIELDS = {
    "Rows": (0, 1, 7, 65535, 60000), "Columns": (0, 1, 9, 65535, 4096),
    "NumberOfFrames": ("0", "-1", "2", "100000", "1e9", "abc", ""),
    "SamplesPerPixel": (0, 2, 3, 4, 255), "BitsAllocated": (0, 1, 8, 12, 16, 32, 64, 255),
    "BitsStored": (0, 1, 8, 12, 16, 31, 64), "HighBit": (0, 15, 255),
    "PixelRepresentation": (0, 1, 2), "PlanarConfiguration": (0, 1, 7),
    "PhotometricInterpretation": ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR",
                                  "YBR_FULL_422", "YBR_FULL", "", "XYZ"),
    "RescaleSlope": ("0", "-1", "1e38", "1e999", "nan", "inf", "abc"),
    "RescaleIntercept": ("-1e38", "1e999", "nan", "x"),
    "WindowCenter": ("0", "nan", "1e999", "-5"), "WindowWidth": ("0", "-1", "1", "nan", "1e-30"),
    "VOILUTFunction": ("SIGMOID", "LINEAR_EXACT", "X"),
    "BurnedInAnnotation": ("YES", ""),
}
_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                      "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50",
                      "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
                      "1.2.840.10008.1.2.4.201", "1.2.3.4", "")


@st.composite
def dicom_fields(draw, seed_bytes: bytes) -> bytes:
    """A seed DICOM with 1..3 image fields (or its transfer syntax) set to hostile values,
    written back with pydicom (so the file stays parseable and the mutation reaches the
    pixel pipeline)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(seed_bytes), force=True)
    for _ in range(draw(st.integers(1, 3))):
        keyword = draw(st.sampled_from([*DICOM_FIELDS, "TransferSyntaxUID"]))
        if keyword == "TransferSyntaxUID":
            if getattr(ds, "file_meta", None) is not None:
                ds.file_meta.TransferSyntaxUID = draw(st.sampled_from(_TRANSFER_SYNTAXES))
            continue
        value = draw(st.sampled_from(DICOM_FIELDS[keyword]))
        try:
            setattr(ds, keyword, value)
        except (ValueError, TypeError, OverflowError):
            continue
    buffer = io.BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=False)
    except Exception:  # noqa: BLE001 - pydicom cannot write this combination: keep the seed
        return seed_bytes
    return buffer.getvalue()


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    chosen = draw(st.sampled_from(seeds))
    if chosen[128:132] == b"DICM" and draw(st.booleans()):
        chosen = draw(dicom_fields(chosen))
        if draw(st.booleans()):
            return chosen
    data = bytearray(chosen)
    magic = _magic_length(data) if draw(st.integers(0, 19)) else 0  # 1 in 20 may hit the magic
    for _ in range(draw(st.integers(1, 6))):
        if len(data) <= magic:
            break
        zone = min(len(data), magic + HEADER_ZONE) if draw(st.booleans()) else len(data)
        at = draw(st.integers(magic, max(zone - 1, magic)))
        kind = draw(st.sampled_from(("flip", "byte", "int16", "int32", "delete", "duplicate",
                                     "insert", "truncate")))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[at] = draw(st.integers(0, 255))
        elif kind in ("int16", "int32"):
            value = draw(st.sampled_from(INTERESTING))
            width = 2 if kind == "int16" else 4
            order = draw(st.sampled_from("<>"))
            packed = struct.pack(order + ("H" if width == 2 else "I"), value & (0xFFFF if width == 2
                                                                            else 0xFFFFFFFF))
            data[at:at + width] = packed
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "duplicate":
            size = draw(st.integers(1, 256))
            data[at:at] = data[at:at + size]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            del data[at:]
    if data.startswith(b"\x89PNG") and draw(st.integers(0, 9)) < 8:
        fix_png_crcs(data)  # else nearly every mutation only tests the CRC check
    return bytes(data)


def _magic_length(data: bytes) -> int:
    """How many leading bytes say what the file is (PNG signature, JPEG SOI, DICOM preamble)."""
    if data.startswith(b"\x89PNG"):
        return 8
    if data.startswith(b"\xff\xd8\xff"):
        return 3
    return 132 if data[128:132] == b"DICM" else 0


def fix_png_crcs(data: bytearray) -> None:
    """Rewrite the CRC of every whole chunk of a (mutated) PNG, in place."""
    offset = 8
    while offset + 12 <= len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        end = offset + 8 + length
        if end + 4 > len(data):
            return
        data[end:end + 4] = struct.pack(">I", zlib.crc32(data[offset + 4:end]) & 0xFFFFFFFF)
        offset = end + 4


# ------------------------------------------------------------------------------------------ run
def run(fmt: str, examples: int, seed_value: int, out: Path, deadline_ms: int,
        hard_seconds: float, nih: Path | None) -> dict:
    from chextriev.errors import ImageReadError, ImageTooLargeError
    from chextriev.io.images import read_image

    seeds = {"png": png_seeds, "jpeg": jpeg_seeds}.get(fmt, lambda _nih: dicom_seeds())(nih)
    for data in seeds:  # every seed decodes: the fuzzer starts from valid files
        read_image(data, max_pixels=FUZZ_MAX_PIXELS)
    stats = {"format": fmt, "seeds": len(seeds), "examples": 0, "decoded": 0, "refused": 0,
             "too_large": 0, "slowest_ms": 0.0, "failures": []}
    last: dict = {}
    current = out / "current.bin"

    def on_alarm(_signum, _frame):
        raise Hang(f"example ran past {hard_seconds} s")

    signal.signal(signal.SIGALRM, on_alarm)

    @seed(seed_value)
    @settings(max_examples=examples, deadline=deadline_ms, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), phases=(Phase.generate, Phase.shrink),
              print_blob=False)
    @given(st.data())
    def prop(data_strategy):
        data = data_strategy.draw(mutated(seeds))
        last["data"] = data
        current.write_bytes(data)  # a crash of the process leaves its input here
        stats["examples"] += 1
        started = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, hard_seconds)
        try:
            pixels = read_image(data, max_pixels=FUZZ_MAX_PIXELS).pixels
        except ImageTooLargeError:
            stats["too_large"] += 1
            return
        except ImageReadError:
            stats["refused"] += 1
            return
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            stats["slowest_ms"] = max(stats["slowest_ms"], (time.perf_counter() - started) * 1000)
        assert isinstance(pixels, np.ndarray) and pixels.dtype == np.float32 and pixels.ndim == 2
        assert pixels.size > 0 and pixels.flags.c_contiguous
        assert np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0
        stats["decoded"] += 1

    started = time.perf_counter()
    try:
        prop()
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt):
            raise
        path = out / f"failure-{len(stats['failures'])}.bin"
        path.write_bytes(last.get("data", b""))
        stats["failures"].append({"error": f"{type(error).__name__}: {str(error)[:2000]}",
                                  "input": str(path)})
    current.unlink(missing_ok=True)
    stats["seconds"] = round(time.perf_counter() - started, 1)
    stats["slowest_ms"] = round(stats["slowest_ms"], 1)
    stats["peak_rss_mb"] = round(peak_rss_kb() / 1024, 1)
    return stats


def peak_rss_kb() -> int:
    """This process's peak resident memory (``VmHWM``: unlike ``ru_maxrss`` it does not carry
    the parent's peak over ``exec``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: the best there is


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("format", choices=("png", "jpeg", "dicom"))
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deadline-ms", type=int, default=10000, help="Hypothesis deadline per example")
    parser.add_argument("--hard-seconds", type=float, default=60.0, help="an example past this is a hang")
    parser.add_argument("--nih", type=Path, default=None, help="the NIH sample folder (png/jpeg seeds)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")
    import logging

    logging.disable(logging.WARNING)  # the decoders log every oddity of every mutated file
    stats = run(args.format, args.examples, args.seed, args.out, args.deadline_ms, args.hard_seconds,
                args.nih if args.nih and (args.nih / "images").is_dir() else None)
    (args.out / "summary.json").write_text(json.dumps(stats, indent=1))
    print(json.dumps(stats))
    return 1 if stats["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
