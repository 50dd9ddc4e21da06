"""Shared fixtures: the tiny tree and the tiny trained Swins that several test files read (built once per
session, per worker under pytest-xdist), the real-data folder when PP_REAL_DATA is set (every test that uses it
is marked real_data), and the cores split between pytest-xdist's workers."""
import os
from pathlib import Path

import pytest
import torch

from data.labels import CLASSES
from helpers import ARCPSA, make_tree, tiny_runs

# The tiny Swins shared by test_deploy, test_visual and test_app: (opts, training steps). 200 steps tell the
# coloured spots apart (the web page's rust example is called rust).
SHARED_MODELS = {"swin": ((), 200), "arcpsa": (ARCPSA, 10)}


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (make test), each worker and the scripts it starts use their share of the cores:
    two workers of two threads each on two cores would only wait on each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    """OUTPUT of the main.py runs of one test file (each run under its own --tag)."""
    return tmp_path_factory.mktemp("output")


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory) -> Path:
    """A prepared tree of coloured-spot leaves (helpers.make_tree): 48 train, 16 val, 16 test."""
    return make_tree(tmp_path_factory.mktemp("tiny_tree"), {"train": 48, "val": 16, "test": 16})


@pytest.fixture(scope="session")
def tiny_swin_runs(tmp_path_factory, tiny_tree) -> dict[str, Path]:
    """The tiny Swin with a linear head and with ArcPSA, trained on tiny_tree and saved as main.py saves a run
    (thresholds 0.5). Shared: read them, or write into a copy (helpers.copy_runs)."""
    return tiny_runs(tmp_path_factory.mktemp("tiny_runs"), tiny_tree, SHARED_MODELS, [0.5] * len(CLASSES))


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
