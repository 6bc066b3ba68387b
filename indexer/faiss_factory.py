"""Which Faiss index to build and where to run it: index types, factory strings, IVF training,
and the device policy (GPU when Faiss sees one and the device allows it, else the CPU).

Index types (all inner product on L2-normalised vectors, i.e. cosine similarity):

* ``flat``      ``IDMap2,Flat``: exact search.
* ``ivf-flat``  ``IVF{nlist},Flat``: inverted lists of exact vectors; ``nprobe`` lists searched.
* ``ivf-pq``    ``IVF{nlist},PQ{m}x{nbits}``: compressed codes, re-ranked with the exact vectors.
* ``auto``      ``flat`` below :data:`AUTO_FLAT_MAX` vectors, ``ivf-flat`` below
                :data:`AUTO_IVF_FLAT_MAX`, ``ivf-pq`` above.

GPU: when Faiss has GPUs (``faiss.get_num_gpus() > 0``) and ``device`` is ``cuda`` or ``auto``,
IVF k-means runs on the GPU (:func:`train`) and unfiltered segment searches use GPU copies
(:func:`to_gpu`); the CPU indexes are always the saved masters. Otherwise one log line says why
and the CPU is used.
"""

from __future__ import annotations

import logging
import math

import faiss
import numpy as np

from chextriev.errors import UnknownNameError

log = logging.getLogger(__name__)

INDEX_TYPES = ("auto", "flat", "ivf-flat", "ivf-pq")
AUTO_FLAT_MAX = 50_000
AUTO_IVF_FLAT_MAX = 2_000_000


def resolve_index_type(index_type: str, n: int) -> str:
    """The concrete type for ``index_type`` (``auto`` picks by ``n``)."""
    if index_type not in INDEX_TYPES:
        raise UnknownNameError("index type", index_type, INDEX_TYPES)
    if index_type != "auto":
        return index_type
    if n < AUTO_FLAT_MAX:
        return "flat"
    return "ivf-flat" if n < AUTO_IVF_FLAT_MAX else "ivf-pq"


def default_nlist(n: int) -> int:
    """About sqrt(n) lists (1,000 at 1M: k-means training stays cheap on a CPU), at least 39
    training points per list, at least 1."""
    return int(max(1, min(round(math.sqrt(max(n, 1))), n // 39)))


def _pq_params(dim: int, n: int) -> tuple[int, int]:
    """(m, nbits): 16 dimensions per sub-quantizer (4 below 256 dimensions); fewer bits on tiny
    training sets."""
    m = max(1, dim // 16 if dim >= 256 else dim // 4)
    while dim % m:
        m -= 1
    nbits = 8 if n >= 39 * 256 else max(4, int(math.log2(max(16, n // 39))))
    return m, min(nbits, 8)


def factory_string(index_type: str, dim: int, n: int, *, n_train: int | None = None) -> str:
    """The Faiss factory string of a concrete ``index_type`` for ``n`` vectors of ``dim``
    (``n_train``: vectors available for training, limits nlist; default ``n``)."""
    if index_type == "flat":
        return "IDMap2,Flat"
    n_train = n if n_train is None else n_train
    nlist = max(1, min(default_nlist(n), n_train // 39 or 1))
    if index_type == "ivf-flat":
        return f"IVF{nlist},Flat"
    if index_type == "ivf-pq":
        m, nbits = _pq_params(dim, n_train)
        return f"IVF{nlist},PQ{m}x{nbits}"
    raise UnknownNameError("index type", index_type, INDEX_TYPES[1:])


def new_index(factory: str, dim: int):
    """An empty Faiss index of ``factory`` (inner product)."""
    return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)


def gpu_available(device: str) -> bool:
    """True when ``device`` allows a GPU and this Faiss build sees one; logs once when not."""
    if device == "cpu":
        return False
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if n_gpus > 0:
        return True
    if device == "cuda":
        log.info("Faiss has no GPU support here (faiss-cpu or no device): building on the CPU")
    return False


def to_gpu(index):
    """A copy of a CPU index on every GPU Faiss sees (raises when that fails)."""
    return faiss.index_cpu_to_all_gpus(index)


def train(index, vectors: np.ndarray, device: str):
    """Train an IVF ``index`` on ``vectors`` ``(n, D)`` (normalised), sampling at most
    ``max(64 nlist, 65,536)`` of them; k-means on the GPU when :func:`gpu_available`."""
    sample = vectors
    ivf = faiss.extract_index_ivf(index)
    concrete = faiss.downcast_index(ivf)
    if isinstance(concrete, faiss.IndexIVFPQ):
        concrete.do_polysemous_training = False  # Hamming filtering is unused, and slow
    limit = max(64 * ivf.nlist, 65_536)  # k-means needs ~39-256 points per centroid
    if len(vectors) > limit:
        pick = np.random.default_rng(0).choice(len(vectors), limit, replace=False)
        sample = vectors[np.sort(pick)]
    if gpu_available(device):
        try:
            ivf.clustering_index = to_gpu(faiss.IndexFlatIP(ivf.d))
            index.train(sample)
            ivf.clustering_index = None
            return index
        except Exception as error:  # noqa: BLE001 - any GPU failure falls back
            log.info("GPU training failed (%s): training on the CPU", error)
    index.train(sample)
    return index
