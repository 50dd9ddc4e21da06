"""Shared fixtures: the real-data folder when PP_REAL_DATA is set."""
import os
from pathlib import Path

import pytest

@pytest.fixture
def real_data() -> Path:
    """The ../shared folder of real Plant Pathology 2021 leaves (skips when it is absent)."""
    path = os.environ.get("PP_REAL_DATA")
    if not path:
        pytest.skip("PP_REAL_DATA not set: no real data")
    return Path(path)
