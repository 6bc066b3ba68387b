"""Every query the read side runs against the catalog (and the column rows the index syncer
writes beside each build): images by id, lookups, thumbnails, vector slots, statuses, patient
keys, and the per-image columns a search filters on.

Functions take an open session (or connection) and only read; :func:`run` runs one of them in a
session of its own, surviving a database restart (a dropped connection is retried once on a
fresh one) and turning an unreachable database into
:class:`~indexer.db.CatalogUnavailableError` (the server's 503).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import numpy as np
from sqlalchemy import Float, Text, and_, case, cast, func, literal, select

from indexer.db import STATUS_INDEXED, Image, Patient, Study, catalog_state

T = TypeVar("T")
#: Ids per ``IN`` list.
CHUNK = 20_000
#: What a finding column holds for an image whose known label is 1 / 0 (images without known
#: labels hold their predicted probability): ``score >= threshold`` is the finding rule.
KNOWN_YES, KNOWN_NO = 2.0, -1.0


def run(sessions, fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(session, *args, **kwargs)`` in a new session of ``sessions``. A connection the
    database dropped (a restart or failover; the engine's pre-ping catches most before use) is
    retried once on a fresh one, a read being safe to repeat; a database that cannot be reached
    raises :class:`~indexer.db.CatalogUnavailableError` naming it."""
    from sqlalchemy.exc import DBAPIError

    from indexer.engine import unavailable

    for attempt in (1, 2):
        try:
            with sessions() as session:
                return fn(session, *args, **kwargs)
        except DBAPIError as error:
            if attempt == 1 and error.connection_invalidated:
                continue
            problem = unavailable(error, sessions.kw["bind"].url.render_as_string(False))
            if problem is None:
                raise
            raise problem from None
    raise AssertionError("unreachable")  # pragma: no cover


def ping(session) -> None:
    """One round trip (``SELECT 1``): the database answers."""
    session.execute(select(literal(1))).scalar()


def store_rows(session) -> int:
    """The vector store's committed length (``catalog_state.store_rows``)."""
    return int(catalog_state(session).store_rows)


def generation(session) -> tuple[int, int]:
    """``(generation, removals)`` of the catalog now."""
    state = catalog_state(session)
    return int(state.generation), int(state.removals)


def image_status(session, ids: Iterable[int]) -> dict[int, str]:
    """``{id: status}`` for the known ``ids`` (one indexed query; cheap per id)."""
    ids = [int(i) for i in ids]
    if not ids:
        return {}
    return dict(session.execute(select(Image.id, Image.status).where(Image.id.in_(ids))).all())


def image_rows(session, ids: Sequence[int]) -> dict[int, dict]:
    """``{id: row}`` of the known ``ids`` (the dicts :meth:`indexer.catalog.Catalog.images`
    returns)."""
    rows = session.execute(
        select(Image, Patient.key, Study.key, Patient.pseudonymised)
        .outerjoin(Patient, Patient.id == Image.patient_id)
        .outerjoin(Study, Study.id == Image.study_id)
        .where(Image.id.in_([int(i) for i in ids]))).all()
    return {image.id: _image_dict(image, patient, study, pseudo)
            for image, patient, study, pseudo in rows}


def lookup(session, image_id: str) -> int | None:
    """The id of an indexed image by its dataset image id, else by its source path."""
    pk = session.execute(select(Image.id).where(
        Image.image_id == image_id, Image.status == STATUS_INDEXED)).scalar()
    if pk is None:
        pk = session.execute(select(Image.id).where(
            Image.source_path == image_id, Image.status == STATUS_INDEXED)).scalar()
    return pk


def lookup_instance(session, sop_instance_uid: str, pseudonym_key: bytes | None = None
                    ) -> int | None:
    """The id of an indexed image by its SOP Instance UID as stored, else (with the indexer's
    ``pseudonym_key``) by its keyed pseudonym (:func:`chextriev.io.deid.uid_pseudonym`)."""
    from chextriev.io.deid import uid_pseudonym

    uid = str(sop_instance_uid).strip()
    for candidate in [uid] + ([uid_pseudonym(pseudonym_key, uid)] if pseudonym_key else []):
        found = session.execute(select(Image.id).where(
            Image.sop_instance_uid == candidate, Image.status == STATUS_INDEXED)).scalar()
        if found is not None:
            return int(found)
    return None


def thumbnail(session, image_id: int) -> bytes | None:
    """The stored thumbnail bytes of one image (None: unknown id or none stored)."""
    found = session.execute(select(Image.thumbnail).where(Image.id == int(image_id))).first()
    return None if found is None or found[0] is None else bytes(found[0])


def vector_slots(session, ids: Iterable[int]) -> dict[int, int | None]:
    """``{id: vector slot}`` of the known ``ids`` (None: no stored vector)."""
    return dict(session.execute(select(Image.id, Image.vector_slot).where(
        Image.id.in_([int(i) for i in ids]))).all())


def patient_pks(session, keys: Sequence[str]) -> list[int]:
    """Primary keys of the patients stored under ``keys``."""
    return list(session.scalars(select(Patient.id).where(Patient.key.in_(list(keys)))))


def first_class_names(session) -> tuple[str, ...]:
    """The finding names of the catalog's model (the first indexed image's predictions)."""
    first = session.execute(select(Image.probabilities).where(
        Image.status == STATUS_INDEXED).order_by(Image.id).limit(1)).scalar()
    return tuple(first or ())


def indexed_ids(connection) -> np.ndarray:
    """Sorted ids of the ``indexed`` rows (a covering scan of ``ix_images_status_slot``)."""
    return np.fromiter(connection.execute(select(Image.id).where(
        Image.status == STATUS_INDEXED).order_by(Image.id)).scalars(), np.int64)


# ---------------------------------------------------------------------- search columns
def _column_query(class_names: Sequence[str]):
    """``id, vector_slot, patient_id, upper(view), upper(sex), age`` and one finding score per
    class of the indexed rows, the scores computed by the database from the JSON columns: an
    image with known labels holds :data:`KNOWN_YES` / :data:`KNOWN_NO` by its label, one
    without holds its predicted probability (0 when absent)."""
    known_text = cast(Image.known_findings, Text)
    has_known = and_(Image.known_findings.isnot(None), known_text.notin_(("null", "{}")))
    columns = [Image.id, Image.vector_slot, Image.patient_id, func.upper(Image.view),
               func.upper(Image.sex), Image.age]
    for name in class_names:
        known = func.coalesce(Image.known_findings[name].as_float(), 0.0) != 0
        predicted = func.coalesce(Image.probabilities[name].as_float(), 0.0)
        columns.append(case((has_known, case((known, literal(KNOWN_YES, Float)),
                                             else_=literal(KNOWN_NO, Float))),
                            else_=cast(predicted, Float)))
    return select(*columns).where(Image.status == STATUS_INDEXED)


def column_rows(connection, class_names: Sequence[str], *, ids: Sequence[int] | None = None,
                from_slot: int | None = None) -> list[tuple]:
    """The search columns of the indexed rows, ordered by id: all of them, those of ``ids``
    (chunked ``IN`` lists), or those stored at vector slot ``from_slot`` or later."""
    query = _column_query(class_names)
    if from_slot is not None:
        query = query.where(Image.vector_slot >= int(from_slot))
    if ids is None:
        return list(connection.execute(query.order_by(Image.id)).all())
    ids = [int(i) for i in ids]
    out: list[tuple] = []
    for start in range(0, len(ids), CHUNK):
        out += connection.execute(query.where(Image.id.in_(ids[start:start + CHUNK]))
                                  .order_by(Image.id)).all()
    return sorted(out, key=lambda row: row[0]) if len(ids) > CHUNK else out


def _image_dict(image: Image, patient_key: str | None, study_key: str | None,
                pseudonymised: bool | None = None) -> dict:
    return {
        "id": image.id,
        "image_id": image.image_id,
        "patient": patient_key,
        "study": study_key,
        "view": image.view,
        "sex": image.sex,
        "age": image.age,
        "study_date": image.study_date,
        "known_findings": image.known_findings,
        "probabilities": image.probabilities,
        "region_probabilities": image.region_probabilities,
        "boxes": image.boxes,
        "box_source": image.box_source,
        "source_path": image.source_path,
        "width": image.width,
        "height": image.height,
        "status": image.status,
        "format": image.format,
        # DICOM UIDs as stored (keyed HMACs when the run pseudonymised: then ``pseudonymised``)
        "study_instance_uid": image.study_instance_uid,
        "series_instance_uid": image.series_instance_uid,
        "sop_instance_uid": image.sop_instance_uid,
        "pseudonymised": bool(pseudonymised),
    }
