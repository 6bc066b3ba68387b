"""Typed errors with messages a user can act on."""

from __future__ import annotations


class ChextrievError(Exception):
    """Base class of every error this project raises on purpose."""


class UnknownNameError(ChextrievError, ValueError):
    """A name (region, finding, class list, variant, preset...) that is not known.

    The message lists the valid names.
    """

    def __init__(self, kind: str, name: str, valid):
        self.kind = kind
        self.name = name
        self.valid = tuple(valid)
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(map(str, self.valid))}")


class ConfigError(ChextrievError, ValueError):
    """Model options that do not go together (e.g. a pooling for a model that does not pool);
    the message says which option applies to what."""


class ImageReadError(ChextrievError):
    """An image (PNG, JPEG, DICOM) that cannot be read; says which one and why."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"cannot read image {source}: {reason}")


class ImageTooLargeError(ImageReadError):
    """An image whose header announces more pixels (or more pixel-data bytes) than the limit: a
    decompression bomb or a genuinely huge image, refused before anything is decoded."""


class DataFormatError(ChextrievError):
    """A metadata file (CSV, scene graph JSON, manifest) that does not follow its format."""


class SourceError(ChextrievError):
    """A record source (an archive folder, a DICOMweb service) that cannot be read as a whole:
    the message names it (never with credentials) and says what to do."""


class SourceUnavailableError(SourceError):
    """The source cannot be reached now (connection refused, timeout, 502/503/504): nothing is
    wrong with the records; rerun when it is back."""


class SourceAuthError(SourceError):
    """The source refused the credentials (HTTP 401 or 403)."""


class InstanceFetchError(ImageReadError):
    """One record's bytes could not be fetched (e.g. HTTP 404 or 500 for one DICOMweb
    instance); the others can still be read."""


class StudyNotFoundError(SourceError):
    """A DICOMweb service holds no instance of the study (or series, or instance) asked for."""

    def __init__(self, message: str, *, study_uid: str):
        super().__init__(message)
        self.study_uid = study_uid


class NoFrontalImageError(SourceError):
    """A study holds no frontal radiograph (by the indexer's view rule); ``found`` lists what it
    holds instead: ``[{"series_uid", "instance_uid", "modality", "view"}]``."""

    def __init__(self, message: str, *, study_uid: str, found: list[dict]):
        super().__init__(message)
        self.study_uid = study_uid
        self.found = list(found)
