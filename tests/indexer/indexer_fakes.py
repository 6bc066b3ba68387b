"""Helpers for the indexer tests: a cheap deterministic embedder and tiny archive writers.

The fake embedder stands in for a checkpoint's model where the test is about the indexer's
bookkeeping (ledger, dedupe, kill -9, verify); the real model is exercised by
test_indexer_model.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from chextriev.vocab import IMAGENOME_FINDINGS, NUM_REGIONS

DIM = 32
REGION_DIM = 8


@dataclass
class FakeBatch:
    embeddings: np.ndarray
    probabilities: np.ndarray
    region_probabilities: np.ndarray
    region_embeddings: np.ndarray
    boxes: np.ndarray
    box_sources: list


class FakeEmbedder:
    """Random projection of an 8x8 thumbnail: distinct images -> distinct unit vectors."""

    checkpoint_id = "fake0000deadbeef"
    embedding_dim = DIM
    class_names = IMAGENOME_FINDINGS
    image_size = 64
    max_input_side = 64  # a roi model: the decoding workers hand it 64 x 64 model pixels

    def __init__(self, delay: float = 0.0):
        rng = np.random.default_rng(0)
        self.projection = rng.standard_normal((64, DIM)).astype(np.float32)
        self.region_projection = rng.standard_normal((64, NUM_REGIONS * REGION_DIM)).astype(np.float32)
        self.delay = delay
        self.calls = 0

    def features(self, image: np.ndarray) -> np.ndarray:
        small = PILImage.fromarray(image.astype(np.float32), mode="F").resize((8, 8), PILImage.Resampling.BOX)
        x = np.asarray(small, dtype=np.float32).reshape(-1)
        return x - x.mean()

    def __call__(self, images, boxes=None):
        """Like ``embed_images``: given boxes are returned as they came (``"given"``), the
        others from a fixed atlas."""
        self.calls += 1
        self.boxes_given = [b is not None for b in boxes] if boxes is not None else [False] * len(images)
        if self.delay:
            time.sleep(self.delay)
        feats = np.stack([self.features(im) for im in images])
        emb = feats @ self.projection
        emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12
        region = (feats @ self.region_projection).reshape(len(images), NUM_REGIONS, REGION_DIM)
        region /= np.linalg.norm(region, axis=2, keepdims=True) + 1e-12
        probs = 1 / (1 + np.exp(-emb[:, : len(self.class_names)] * 4))
        given = list(boxes) if boxes is not None else [None] * len(images)
        out_boxes = np.stack([_atlas(im.shape) if b is None else np.asarray(b, np.float32)
                              for im, b in zip(images, given)])
        return FakeBatch(emb, probs.astype(np.float32),
                         np.repeat(probs[:, None, :], NUM_REGIONS, axis=1), region, out_boxes,
                         ["atlas" if b is None else "given" for b in given])


def _atlas(shape) -> np.ndarray:
    h, w = shape
    boxes = np.tile(np.array([0.1 * w, 0.1 * h, 0.9 * w, 0.9 * h], np.float32), (NUM_REGIONS, 1))
    boxes[17] = np.nan  # one missing region
    return boxes


def noise_image(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.random((8, 8)).astype(np.float32)
    return np.kron(base, np.ones((size // 8, size // 8), np.float32))


def write_png(path: Path, seed: int, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray((noise_image(seed, size) * 255).astype(np.uint8), mode="L").save(path)
    return path


def write_dicom(path: Path, seed: int, *, view: str | None = "PA", patient: str = "P1",
                sop_uid: str | None = None, size: int = 64, sex: str = "F", age: str = "045Y",
                study_uid: str | None = None) -> Path:
    """A 12-bit DX file of :func:`noise_image` (``view`` ``None``: no ViewPosition)."""
    from dicom_files import make_dicom
    from dicom_files import write_dicom as save_dicom
    from pydicom.uid import generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    ds = make_dicom((noise_image(seed, size) * 4095).astype(np.uint16), sop_uid=sop_uid,
                    StudyInstanceUID=study_uid or generate_uid(), PatientID=patient,
                    PatientSex=sex, PatientAge=age, ViewPosition=view)
    return save_dicom(path, ds)


def make_archive(root: Path, *, n_png: int = 6, n_dicom: int = 4, seed0: int = 0) -> dict:
    """A tiny archive: PNGs with a manifest, DICOMs (one with no extension), a lateral DICOM,
    a broken file and a byte-identical duplicate PNG. Returns what was written."""
    written = {"png": [], "dicom": [], "lateral": [], "broken": [], "duplicate": []}
    lines = [("path,image_id,patient_id,study_id,view,sex,age,lung opacity,pleural effusion,"
             "atelectasis,enlarged cardiac silhouette,pulmonary edema/hazy opacity,pneumothorax,"
             "consolidation,fluid overload/heart failure,pneumonia")]
    for i in range(n_png):
        rel = f"png/p{i % 3}/img{seed0 + i}.png"
        write_png(root / rel, seed0 + i)
        findings = ",".join(str(int(j == i % 9)) for j in range(9))
        lines.append(f"{rel},img{seed0 + i},pat{i % 3},st{i},PA,{'M' if i % 2 else 'F'},{30 + i},{findings}")
        written["png"].append(root / rel)
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    for i in range(n_dicom):
        name = f"dcm/d{seed0 + i}.dcm" if i else f"dcm/d{seed0 + i}"  # one without extension
        written["dicom"].append(write_dicom(root / name, 1000 + seed0 + i, patient=f"DP{i % 2}",
                                            view="AP" if i % 2 else "PA"))
    written["lateral"].append(write_dicom(root / "dcm/lateral.dcm", 5000 + seed0, view="LL"))
    broken = root / "png/broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    written["broken"].append(broken)
    dup = root / "png/p0/zz_copy_of_img0.png"
    dup.write_bytes(written["png"][0].read_bytes())
    written["duplicate"].append(dup)
    return written


# ---------------------------------------------------------------------- pre-embedded items
def clustered_vectors(n: int, dim: int = DIM, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


_THUMB: bytes | None = None


def _thumb() -> bytes:
    global _THUMB
    if _THUMB is None:
        from chextriev.io.pixels import encode_thumbnail

        _THUMB = encode_thumbnail(noise_image(1, 64))  # what a decoding worker makes
    return _THUMB


def embedded_items(vectors: np.ndarray, *, start: int = 0, region_dim: int = REGION_DIM):
    """Decoded items that already carry model outputs (as distributed shards do): the writer
    stores them without calling an embedder. Item i is ``/virtual/img<start+i>.png``."""
    from indexer.decode import OK, Decoded

    items = []
    rng = np.random.default_rng(start)
    for i, vector in enumerate(vectors):
        n = start + i
        region = rng.standard_normal((NUM_REGIONS, region_dim)).astype(np.float32)
        region /= np.linalg.norm(region, axis=1, keepdims=True)
        probs = 1 / (1 + np.exp(-vector[: len(IMAGENOME_FINDINGS)] * 4))
        items.append(Decoded(
            f"/virtual/img{n:07d}.png", 1000 + n, n, f"{n:064x}", OK, None, "png",
            {"image_id": f"img{n}", "patient_id": f"pat{n % 97}", "study_id": f"st{n}",
             "view": "PA", "sex": "MF"[n % 2], "age": float(20 + n % 60)},
            None, (64, 64), _thumb(),
            {"embedding": vector, "probabilities": probs.astype(np.float32),
             "region_probabilities": None, "region_embeddings": region,
             "boxes": _atlas((64, 64)), "box_source": "atlas"}))
    return items


class _Info:
    checkpoint_id = FakeEmbedder.checkpoint_id
    class_names = IMAGENOME_FINDINGS
    image_size = 64

    def __init__(self, dim):
        self.embedding_dim = dim

    def __call__(self, images, boxes=None):  # pragma: no cover - items are pre-embedded
        raise AssertionError("pre-embedded items need no embedder")


def write_embedded(index_dir, vectors, *, db_url=None, index_type="auto", batch=500, start=0,
                   sync=True):
    """Write pre-embedded items for ``vectors`` into a catalog (the real writer and syncer)."""
    from indexer.pipeline import IndexSummary
    from indexer.sync import IndexSyncer
    from indexer.vector_store import open_store
    from indexer.writer import CatalogWriter, WritableCatalog

    vectors = np.asarray(vectors, np.float32)
    info = _Info(vectors.shape[1])
    summary = IndexSummary()
    with WritableCatalog(index_dir, db_url) as catalog:
        with catalog.sessions() as session:
            store = open_store(session, index_dir, dim=info.embedding_dim, create=True)
        writer = CatalogWriter(catalog.sessions, info, summary, store=store)
        for s in range(0, len(vectors), batch):
            writer.write(embedded_items(vectors[s:s + batch], start=start + s))
        if sync:
            manifest = IndexSyncer(catalog.sessions, index_dir, checkpoint_id=info.checkpoint_id,
                                   dim=info.embedding_dim, index_type=index_type,
                                   store=store).sync()
            summary.index_size, summary.build_id = manifest.n_vectors, manifest.build_id
    return summary


def open_sessions(index_dir, db_url=None):
    """A sessionmaker on the catalog of ``index_dir`` (or ``db_url``)."""
    from indexer.db import default_db_url
    from indexer.engine import make_engine, make_sessionmaker

    return make_sessionmaker(make_engine(db_url or default_db_url(index_dir)))


def crash_on_abort_name(task: tuple):
    """A decode task that kills its own process, as a crashing C++ decoder would, on a file
    named ``abort-me``; every other file is decoded as usual."""
    import os
    import signal

    from indexer.decode import decode_task

    if Path(str(task[0].key)).stem == "abort-me":
        os.kill(os.getpid(), signal.SIGKILL)
    return decode_task(task)


def slow_crash_on_abort_name(task: tuple):
    """:func:`crash_on_abort_name`, the crash one second into the task (the others finish
    first)."""
    import time

    if Path(str(task[0].key)).stem == "abort-me":
        time.sleep(1.0)
    return crash_on_abort_name(task)
