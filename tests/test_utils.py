"""utils/files.py, utils/runtime.py, training/checkpoint.py: atomic files, checkpoint reading, RNG state as plain
data, devices, logging."""
from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from config import get_default_config
from training.checkpoint import load_checkpoint_file
from training.rundir import RunDir
from utils.cli import run_cli
from utils.files import DiskFullError, atomic_save, atomic_write_text
from utils.log import create_logger
from utils.runtime import select_device
from utils.seeding import get_rng_state, set_rng_state


def test_atomic_save_replaces_whole_file_or_nothing(tmp_path):
    path = tmp_path / "ckpt.pth"
    atomic_save({"model": {"w": torch.ones(2)}}, path)
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        atomic_save({"bad": lambda: None}, path)  # a lambda cannot be pickled
    assert torch.equal(load_checkpoint_file(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # no temp file left behind


def test_atomic_write_text(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text("one\n", path)
    atomic_write_text("two\n", path)
    assert path.read_text() == "two\n"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]  # no temp file left behind


def test_load_checkpoint_file_names_bad_files(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth"):
        load_checkpoint_file(text)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(1), tensor)
    with pytest.raises(ValueError, match="tensor.pth"):
        load_checkpoint_file(tensor)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint_file(tmp_path / "missing.pth")


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in NumPy's state
    atomic_save({"rng": get_rng_state()}, tmp_path / "rng.pth")
    expected = random.random(), np.random.randn(), torch.rand(3)
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint_file(tmp_path / "rng.pth")["rng"])
    got = random.random(), np.random.randn(), torch.rand(3)
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            select_device("cuda")
    with pytest.raises(ValueError):
        select_device("tpu")


def test_run_dir():
    config = get_default_config()
    config.merge_from_list(["OUTPUT", "out", "MODEL.NAME", "net", "TAG", "t1"])
    assert RunDir.of(config).path.as_posix() == "out/net/t1"


def test_logger_writes_log_file_once_per_message(tmp_path):
    for _ in range(2):  # a second logger in the same process must not duplicate lines
        logger = create_logger(tmp_path, 0, name="test_utils")
    logger.info("hello")
    logger.warning("careful")
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert len(lines) == 2 and lines[0].endswith("INFO hello") and "\x1b[" not in lines[1]
    other = tmp_path / "rank1"
    create_logger(other, 1, name="test_utils_rank1").info("quiet")
    assert not (other / "log.txt").exists()


@pytest.mark.parametrize("error, code, line", [
    (ValueError("data.csv: no images column"), 2, "error: data.csv: no images column"),
    (DiskFullError(Path("run/ckpt_latest.pth")), 1,
     "error: no space left on the device while writing run/ckpt_latest.pth"),
    (KeyboardInterrupt(), 130, "interrupted"),  # a second Ctrl-C
])
def test_run_cli_turns_errors_into_one_line_and_an_exit_code(error, code, line, capsys):
    def main():
        raise error

    with pytest.raises(SystemExit) as exited:
        run_cli(main)
    assert exited.value.code == code
    printed = capsys.readouterr().err
    assert line in printed and "Traceback" not in printed and len(printed.strip().splitlines()) == 1
