"""Fixtures for tests/io (helpers live in iofiles.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_files import make_dicom, write_dicom


@pytest.fixture
def dicom_factory(tmp_path):
    """``factory(name, stored, **kwargs) -> path`` writing a DICOM file in tmp_path."""

    def factory(name: str, stored: np.ndarray, **kwargs) -> Path:
        return write_dicom(tmp_path / name, make_dicom(stored, **kwargs))

    return factory
