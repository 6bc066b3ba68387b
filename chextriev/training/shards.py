"""Preprocessed training shards: downscaled images + labels + boxes in tar files, read in order.

For archives on network storage, where reading many large originals one by one is slow:
``chextriev shards write --data ARCHIVE --out DIR --max-side N --shard-size S`` reads every
record once and writes ``DIR/shard-000000.tar``, ... (``S`` images each), each sample two tar
members in the WebDataset layout (same base name, read with plain :mod:`tarfile`):

* ``<n>.png``: the image shrunk so that its longer side is at most ``N`` (aspect kept,
  antialiased), as a 16-bit grayscale PNG;
* ``<n>.json``: the record (image, patient and study ids, view, split, class names, labels and
  region labels with ``null`` for unknown entries, boxes in pixels of the stored image, the
  stored and the original size, the original source).

``DIR/index.json`` (``format: chextriev-shards``) lists the shards (name, bytes, sha256,
samples) and every sample's record with its shard, byte offset, size and content sha256; the
training side reads it to split patients and fit the atlas without opening a shard.

Crash safety: a shard is written to ``.shard-NNNNNN.tar.partial``, flushed and fsynced, then
renamed into place; ``index.json`` is written last the same way. A killed write leaves no
``index.json`` (the folder is refused as shards, with a message to rerun the write: a new write
deletes the previous index before it writes its first shard); a shard whose size differs from
its index entry (truncated, replaced) is refused by name, and ``chextriev shards verify DIR``
also checks every shard's sha256. A new write removes stale ``.partial`` files and shards its
index does not list.

Reading: :func:`load_shard_records` gives :class:`~chextriev.records.Record` objects whose
``meta["shard"]`` locates the image; :func:`read_shard_image` reads one image by offset (the
frozen-feature cache fills its misses in index order, so a shard is read front to back), and
:class:`ShardStream` yields whole shards sequentially (shard order shuffled per epoch, plus a
bounded shuffle buffer) for training that reads images every epoch (augmentation, ATH, a
trained backbone). Tests: ``tests/training/test_shards.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info
from tqdm import tqdm

from chextriev.errors import DataFormatError
from chextriev.files import atomic_write, commit_file, sha256_file
from chextriev.io.pixels import shrink
from chextriev.records import Record

log = logging.getLogger(__name__)

FORMAT = "chextriev-shards"
VERSION = 1
INDEX = "index.json"
SHARD_PATTERN = "shard-{:06d}.tar"


def is_shard_dir(path: str | Path) -> bool:
    """True when ``path`` is a folder with a shard ``index.json``."""
    index = Path(path) / INDEX
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def shrink_with_boxes(image: np.ndarray, boxes: np.ndarray | None,
                      max_side: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``image (H, W)`` shrunk by THE shrink (:func:`chextriev.io.pixels.shrink`: ``max(h, w) <=
    max_side``, aspect kept, the model's antialiased bilinear) and ``boxes (18, 4)`` scaled with
    it; both unchanged when the image is already small enough."""
    small = shrink(image, max_side)
    if small.shape == image.shape[:2]:
        return small, boxes
    (height, width), (h, w) = image.shape[:2], small.shape
    factor = np.array([w / width, h / height, w / width, h / height], np.float32)
    return small, None if boxes is None else np.asarray(boxes, np.float32) * factor


def _png16(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def _nullable(array: np.ndarray | None) -> Any:
    if array is None:
        return None
    return [_nullable(row) if np.ndim(row) else (None if np.isnan(row) else float(row)) for row in array]


def _array(value: Any, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    if value is None:
        return None
    array = np.array(value, dtype=object)
    return np.where(array == None, np.nan, array).astype(np.float32).reshape(shape or array.shape)


def _sample_meta(record: Record, stored: tuple[int, int], original: tuple[int, int],
                 boxes: np.ndarray | None) -> dict[str, Any]:
    meta = {k: v for k, v in record.meta.items() if isinstance(v, (str, int, float, bool, type(None)))}
    return {"image_id": record.image_id, "patient_id": record.patient_id, "study_id": record.study_id,
            "view": record.view, "split": record.split, "class_names": list(record.class_names),
            "labels": _nullable(record.labels), "region_labels": _nullable(record.region_labels),
            "boxes": _nullable(boxes), "image_size": list(stored), "original_size": list(original),
            "origin": record.origin, "meta": meta,
            "source": str(record.source) if isinstance(record.source, (str, Path)) else "<bytes>"}


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> int:
    """Add one member; returns the byte offset of its data in the tar file."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
    offset = tar.offset + len(info.tobuf(tar.format, tar.encoding, tar.errors))
    tar.addfile(info, io.BytesIO(data))
    return offset


def write_shards(records: Sequence[Record], out: str | Path, *, max_side: int = 1024, shard_size: int = 1000,
                 load: Callable[[Record], np.ndarray] | None = None, progress: bool = True) -> Path:
    """Write ``records`` as shards under ``out`` (see the module docstring); returns ``index.json``.

    ``load`` decodes one record (default :func:`chextriev.io.images.load_image` of its source).
    Records whose image cannot be read are skipped with a warning and counted in the index.
    """
    from chextriev.errors import ImageReadError
    from chextriev.io.images import load_image

    if max_side < 8:
        raise ValueError(f"max_side must be >= 8, got {max_side}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    records = list(records)
    if not records:
        raise DataFormatError("no records to write as shards")
    load = load or (lambda record: load_image(record.source))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # the previous index goes first: a killed rewrite must not leave an index over new shards
    (out / INDEX).unlink(missing_ok=True)
    for stale in out.glob(".shard-*.tar.partial"):
        stale.unlink()
    shards: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    skipped: list[str] = []
    now = time.time()
    tar = handle = tmp = None
    in_shard = 0
    bar = tqdm(total=len(records), desc="shards", unit="image", disable=not progress)

    def close_shard() -> None:
        nonlocal tar, handle, tmp, in_shard
        if tar is None:
            return
        tar.close()
        handle.close()
        name = SHARD_PATTERN.format(len(shards))
        commit_file(tmp, out / name, dir_sync=True)
        shards.append({"name": name, "bytes": (out / name).stat().st_size, "sha256": sha256_file(out / name),
                       "samples": in_shard})
        tar = handle = tmp = None
        in_shard = 0

    try:
        for record in records:
            bar.update(1)
            try:
                image = load(record)
            except ImageReadError as error:
                log.warning("shards: %s skipped: %s", record.image_id, error)
                skipped.append(record.image_id)
                continue
            original = (int(image.shape[0]), int(image.shape[1]))
            boxes = record.boxes
            if boxes is not None and record.image_size is not None and tuple(record.image_size[:2]) != original:
                raise DataFormatError(f"{record.image_id}: record size {record.image_size} differs from its image "
                                      f"{original}: its boxes cannot be scaled")
            small, small_boxes = shrink_with_boxes(image, boxes, max_side)
            png = _png16(small)
            if tar is None:
                tmp = out / f".{SHARD_PATTERN.format(len(shards))}.partial"
                # open across records, closed by close_shard or the finally below
                handle = open(tmp, "wb")  # noqa: SIM115
                tar = tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
            n = len(samples)
            meta = _sample_meta(record, (int(small.shape[0]), int(small.shape[1])), original, small_boxes)
            offset = _add(tar, f"{n:08d}.png", png, now)
            _add(tar, f"{n:08d}.json", json.dumps(meta).encode(), now)
            samples.append({**meta, "shard": SHARD_PATTERN.format(len(shards)), "offset": offset, "size": len(png),
                            "member": f"{n:08d}", "sha256": hashlib.sha256(png).hexdigest()})
            in_shard += 1
            if in_shard >= shard_size:
                close_shard()
        close_shard()
    finally:
        bar.close()
        if tar is not None:  # an error mid-shard: leave no partial shard behind
            tar.close()
            handle.close()
            tmp.unlink(missing_ok=True)
    listed = {s["name"] for s in shards}
    for old in out.glob("shard-*.tar"):
        if old.name not in listed:
            old.unlink()
    index = {"format": FORMAT, "version": VERSION, "max_side": int(max_side), "shard_size": int(shard_size),
             "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "shards": shards,
             "skipped": skipped, "samples": samples}
    atomic_write(out / INDEX, json.dumps(index), dir_sync=True)
    log.info("wrote %d images in %d shards to %s (%d skipped)", len(samples), len(shards), out, len(skipped))
    return out / INDEX


def read_index(directory: str | Path, verify: bool = False) -> dict[str, Any]:
    """The shard folder's index, every listed shard checked to exist with its listed size
    (``verify``: and its sha256). Raises :class:`DataFormatError` naming what is wrong."""
    directory = Path(directory)
    path = directory / INDEX
    if not path.is_file():
        partial = sorted(p.name for p in directory.glob(".shard-*.partial")) + sorted(
            p.name for p in directory.glob("shard-*.tar"))
        hint = f" ({len(partial)} shard files without an index: a write that did not finish)" if partial else ""
        raise DataFormatError(f"{directory} has no {INDEX}{hint}: rerun `chextriev shards write`")
    try:
        index = json.loads(path.read_text())
    except ValueError as error:
        raise DataFormatError(f"{path} is not valid JSON ({error}): rerun `chextriev shards write`") from error
    if index.get("format") != FORMAT or int(index.get("version", 0)) != VERSION:
        raise DataFormatError(f"{path} is not a {FORMAT} index of version {VERSION}")
    for shard in index["shards"]:
        file = directory / shard["name"]
        if not file.is_file():
            raise DataFormatError(f"shard {file} listed in {INDEX} is missing: rerun `chextriev shards write`")
        size = file.stat().st_size
        if size != shard["bytes"] or (verify and sha256_file(file) != shard["sha256"]):
            raise DataFormatError(f"shard {file} is {size} bytes, its index says {shard['bytes']}"
                                  f"{' (or its sha256 differs)' if verify else ''}: truncated or replaced; "
                                  "rerun `chextriev shards write`")
    return index


def load_shard_records(directory: str | Path, verify: bool = False) -> list[Record]:
    """Records of a shard folder (index order); ``meta["shard"]`` = ``{"path", "offset", "size",
    "sha256", "member"}`` locates each image; boxes and ``image_size`` are the stored image's."""
    directory = Path(directory).resolve()
    index = read_index(directory, verify=verify)
    records = []
    for sample in index["samples"]:
        names = tuple(sample["class_names"])
        labels = _array(sample["labels"])
        region = _array(sample["region_labels"])
        boxes = _array(sample["boxes"], (18, 4)) if sample["boxes"] is not None else None
        path = directory / sample["shard"]
        meta = dict(sample.get("meta") or {})
        meta["shard"] = {"path": str(path), "offset": int(sample["offset"]), "size": int(sample["size"]),
                         "sha256": sample["sha256"], "member": sample["member"]}
        meta["original_size"] = tuple(sample["original_size"])
        records.append(Record(
            source=str(path), image_id=sample["image_id"], patient_id=sample["patient_id"],
            study_id=sample["study_id"], view=sample["view"], class_names=names, labels=labels,
            region_labels=region, boxes=boxes, image_size=tuple(sample["image_size"]),
            origin=f"shards {directory.name}: {sample.get('source', '')}", split=sample["split"], meta=meta,
            key=f"{path}#{sample['member']}", version=None))
    return records


def is_shard_record(record: Record) -> bool:
    return isinstance(record.meta.get("shard"), dict)


def shard_bytes(record: Record) -> bytes:
    """The stored PNG bytes of a shard record (one seek and one read)."""
    where = record.meta["shard"]
    with open(where["path"], "rb") as handle:
        handle.seek(where["offset"])
        data = handle.read(where["size"])
    if len(data) != where["size"]:
        raise DataFormatError(f"shard {where['path']} ends inside {record.image_id}: truncated; rerun the write")
    return data


def read_shard_image(record: Record) -> np.ndarray:
    """``(h, w)`` float32 in [0, 1]: the stored image of a shard record."""
    from chextriev.io.images import load_image

    return load_image(shard_bytes(record))


class ShardStream(IterableDataset):
    """Items of ``records`` (shard records, e.g. one split), read shard by shard front to back.

    ``make_item(index, image)`` turns record ``index`` and its decoded image into a training
    item. Each epoch (:meth:`set_epoch`, else a counter) shuffles the shard order with
    ``seed + epoch`` and passes items through a shuffle buffer of ``buffer`` items; DataLoader
    workers take every n-th shard. Single process only (several DDP ranks would need equal
    counts per rank): :class:`~chextriev.training.data.RetrievalDataModule` uses it only then.
    """

    def __init__(self, records: Sequence[Record], make_item: Callable[[int, np.ndarray], dict],
                 seed: int = 0, buffer: int = 256, shuffle: bool = True):
        from chextriev.io.images import load_image

        self.records, self.make_item = list(records), make_item
        self.seed, self.buffer, self.shuffle, self.epoch = seed, max(1, buffer), shuffle, 0
        self._load = load_image
        self.by_shard: dict[str, list[int]] = {}
        for i, record in enumerate(self.records):
            if not is_shard_record(record):
                raise DataFormatError(f"{record.image_id} is not a shard record")
            self.by_shard.setdefault(record.meta["shard"]["path"], []).append(i)
        self.position = {(r.meta["shard"]["path"], r.meta["shard"]["member"]): i for i, r in enumerate(self.records)}

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _read_shard(self, path: str) -> Iterator[tuple[int, bytes]]:
        with tarfile.open(path, mode="r|") as tar:  # a stream: sequential reads only
            for member in tar:
                if not member.name.endswith(".png"):
                    continue
                index = self.position.get((path, member.name[:-4]))
                if index is None:  # another split's image
                    continue
                yield index, tar.extractfile(member).read()

    def __iter__(self) -> Iterator[dict]:
        rng = np.random.default_rng(self.seed + self.epoch)
        order = list(self.by_shard)
        if self.shuffle:
            rng.shuffle(order)
        worker = get_worker_info()
        if worker is not None:
            order = order[worker.id::worker.num_workers]
        self.epoch += 1
        pool: list[dict] = []
        for path in order:
            for index, data in self._read_shard(path):
                item = self.make_item(index, self._load(data))
                if not self.shuffle:
                    yield item
                    continue
                pool.append(item)
                if len(pool) >= self.buffer:
                    yield pool.pop(int(rng.integers(len(pool))))
        while pool:
            yield pool.pop(int(rng.integers(len(pool))))
