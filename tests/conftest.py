"""Shared fixtures: the real-data folder when PP_REAL_DATA is set (every test that uses it is marked real_data);
the cores split between pytest-xdist's workers."""
import os
from pathlib import Path

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (make test), each worker and the scripts it starts use their share of the cores:
    two workers of two threads each on two cores would only wait on each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        torch.set_num_threads(threads)


@pytest.fixture
def real_data() -> Path:
    """The ../shared folder of real Plant Pathology 2021 leaves (skips when it is absent)."""
    path = os.environ.get("PP_REAL_DATA")
    if not path:
        pytest.skip("PP_REAL_DATA not set: no real data")
    return Path(path)


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``real_data`` every test that asks for the real_data fixture, directly or through another fixture."""
    for item in items:
        if "real_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)
