"""The bottom of the reader path: the :class:`RecordSource` every source is, and how a worker
process gets a record's bytes (:func:`fetch_bytes`: a file read, or the connection a remote
source registered, e.g. a DICOMweb service's WADO-RS). :mod:`chextriev.io.sources` opens
sources (``open_source``) and re-exports these names; a source class such as
:class:`chextriev.io.dicomweb.DicomwebSource` builds on this module, not on the opener.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from chextriev.errors import ImageReadError
from chextriev.records import Record


class RecordSource:
    """Where records come from. Subclasses implement :meth:`iter_records`."""

    description = "records"

    def iter_records(self) -> Iterator[Record]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Record]:
        return self.iter_records()

    def describe(self) -> str:
        """A short description for logs (never a secret)."""
        return self.description

    def connections(self) -> tuple[Connection, ...]:
        """What a worker process needs to :func:`fetch_bytes` these records (picklable)."""
        return ()

    def check(self) -> None:
        """Fail fast when the source cannot be read at all (a no-op for local sources).

        Raises:
            SourceError: e.g. an unreachable DICOMweb service, or refused credentials.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class Connection(Protocol):
    """A picklable handle a worker uses to fetch the bytes of the records whose key starts
    with ``key_prefix`` (e.g. one DICOMweb service)."""

    key_prefix: str

    def fetch(self, record: Record) -> bytes: ...


_CONNECTIONS: dict[str, Connection] = {}


def register_connections(connections: Sequence[Connection]) -> None:
    """Make ``connections`` available to :func:`fetch_bytes` in this process (pool initializer)."""
    for connection in connections:
        _CONNECTIONS[connection.key_prefix] = connection


def fetch_bytes(record: Record) -> bytes:
    """The bytes of ``record``'s image: a file read, or a WADO-RS retrieve of the instance.

    Raises:
        ImageReadError: the file cannot be read; :class:`~chextriev.errors.InstanceFetchError`
            for one DICOMweb instance (404, 500, ...).
        SourceError: the DICOMweb service is unreachable or refuses the credentials.
    """
    key = record.key
    if key and not key.startswith("/") and ":" in key.split("/", 1)[0]:
        for prefix, connection in _CONNECTIONS.items():
            if key.startswith(prefix):
                return connection.fetch(record)
        raise ImageReadError(
            key, "no connection for this source in this process (pass source.connections() to "
            "chextriev.io.sources.register_connections)")
    path = record.source
    if isinstance(path, (bytes, bytearray, memoryview)):
        return bytes(path)
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise ImageReadError(str(path), f"cannot read file: {error.strerror or error}") from None
