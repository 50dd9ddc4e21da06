"""Fault injection with real processes and real signals.

Runs are stopped from another process (SIGTERM, SIGINT to the process group as a terminal's Ctrl-C
does, SIGKILL) at chosen moments (utils/faults.py pauses them there; bench/soak.py stops them at random
ones), their checkpoints are truncated, their disk fills up, a second process starts on their run
dir, a torchrun rank dies, prepare.py is killed. Every resumed run is compared tensor by tensor with
the uninterrupted one.
"""
from __future__ import annotations

import errno
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from helpers import (
    ROOT,
    children,
    cli,
    has_ended,
    load_script,
    make_tree,
    run_dir,
    snapshot,
    start_script,
    wait_until_paused,
)
from process.synthesize import synthesize
from process.tree import prepare
from training import checkpoint
from training.checkpoint import load_checkpoint_file
from utils.cli import run_cli
from utils.errors import EXIT_FAILED, EXIT_INTERRUPTED
from utils.faults import PAUSE_ENV
from utils.files import atomic_write
from utils.runlock import LOCK_NAME, RunLockedError, hold_run_lock

# the run dir's file names, as a user sees them (rundir.RunDir)
LATEST, PREVIOUS = "ckpt_latest.pth", "ckpt_latest.prev.pth"

main = load_script("main.py")

# EMA on, the default stochastic depth (0.1: the global RNG matters), three epochs of 6 updates.
OPTS = ("MODEL.EMA.ENABLE", "True", "TRAIN.EPOCHS", "3")
WORKERS = ("DATA.NUM_WORKERS", "2")  # the stopped runs; the uninterrupted reference has none
UPDATE_8 = "saved .*ckpt_latest.pth at epoch 1 step 2"  # update 8 of 6 per epoch: step 2 of epoch 1
AFTER_EPOCH_1 = "stopped after epoch 1"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree"), {"train": 24, "val": 11})


@pytest.fixture(scope="module")
def whole(tree, output) -> Path:
    """The uninterrupted run (no loader workers: the result must not depend on them either)."""
    assert main.main(cli(tree, output, "whole", *OPTS)) == 0
    return run_dir(output, "whole")


def assert_same_run(whole: Path, resumed: Path) -> None:
    """Same final weights (model and EMA, every tensor), same validation history, no partial file left."""
    a, b = load_checkpoint_file(whole / LATEST), load_checkpoint_file(resumed / LATEST)
    assert (b["epoch"], b["step"]) == (a["epoch"], a["step"])
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        differ = [key for key in a[part] if not torch.equal(a[part][key], b[part][key])]
        assert not differ, f"{part}: {len(differ)} of {len(a[part])} tensors differ, e.g. {differ[:3]}"
    # train_loss of an epoch resumed mid-way averages only the steps run after the resume.
    columns = lambda table: table.drop(columns=["train_loss", "time_s"])  # noqa: E731
    pd.testing.assert_frame_equal(columns(pd.read_csv(whole / "history.csv")),
                                  columns(pd.read_csv(resumed / "history.csv")))
    assert not list(resumed.glob(".*.tmp")) and not (resumed / LOCK_NAME).exists()


def stop_at(args: list[str], point: str, signum: int, group: bool = False) -> tuple[subprocess.Popen, str]:
    """Start main.py, wait until it reaches ``point``, send ``signum`` from here; returns it ended, and its output."""
    process = start_script("main.py", args, pause_at=point)
    before = wait_until_paused(process)
    (os.killpg if group else os.kill)(process.pid, signum)
    after, _ = process.communicate(timeout=120)
    return process, before + after


# ---------------------------------------------------------------------------------------------
# 1. Exact resume from a stop at any moment
# ---------------------------------------------------------------------------------------------

STOPS = {  # (utils/faults.py point, signal, sent to the whole process group, what the stopped run logs)
    "mid_epoch": ("update#8", signal.SIGTERM, False, UPDATE_8),
    "ctrl_c_to_the_process_group": ("update#8", signal.SIGINT, True, UPDATE_8),
    # systemd's stop, Slurm's scancel, kill -- -PGID: SIGTERM reaches the loader workers too
    "sigterm_to_the_process_group": ("update#8", signal.SIGTERM, True, UPDATE_8),
    "during_validation": ("validation#2", signal.SIGTERM, False, AFTER_EPOCH_1),
    "during_the_checkpoint_write": ("writing:ckpt_latest.pth#2", signal.SIGTERM, False, AFTER_EPOCH_1),
    "right_after_the_checkpoint": ("saved#2", signal.SIGTERM, False, AFTER_EPOCH_1),
}


@pytest.mark.slow
@pytest.mark.parametrize("point, signum, group, logged", STOPS.values(), ids=list(STOPS))
def test_stop_from_outside_then_resume_equals_the_uninterrupted_run(tree, output, whole, request, point, signum,
                                                                    group, logged):
    tag = request.node.callspec.id
    args = cli(tree, output, tag, *OPTS, *WORKERS)
    stopped, printed = stop_at(args, point, signum, group)
    assert stopped.returncode == EXIT_INTERRUPTED, printed[-3000:]
    assert re.search(f"{signal.Signals(signum).name}: {logged}", printed), printed[-3000:]
    assert main.main(args) == 0  # the same command again
    assert_same_run(whole, run_dir(output, tag))


@pytest.mark.slow
def test_sigkill_during_the_checkpoint_write_keeps_the_previous_one(tree, output, whole, caplog):
    args = cli(tree, output, "sigkill_writing", *OPTS, *WORKERS)
    folder = run_dir(output, "sigkill_writing")
    killed, _ = stop_at(args, "writing:ckpt_latest.pth#2", signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert len(list(folder.glob(f".{LATEST}.*.tmp"))) == 1  # epoch 1's, complete but never renamed
    latest = load_checkpoint_file(folder / LATEST)
    assert (latest["epoch"], latest["step"]) == (0, 0)  # the end of epoch 0: the replay starts there
    assert f'"pid": {killed.pid}' in (folder / LOCK_NAME).read_text()

    assert main.main(args) == 0
    assert f"taking over the lock of main.py training (pid {killed.pid}" in caplog.text
    assert re.search(r"removed 1 partial file\(s\) of a killed run: \.ckpt_latest\.pth\..*\.tmp",
                     (folder / "log.txt").read_text())
    assert_same_run(whole, folder)


@pytest.mark.slow
def test_gradient_accumulation_trains_and_resumes_exactly(tree, output):
    accumulate = (*OPTS, "TRAIN.ACCUMULATION_STEPS", "2")
    assert main.main(cli(tree, output, "accumulate_whole", *accumulate)) == 0
    whole = run_dir(output, "accumulate_whole")
    optimizer = load_checkpoint_file(whole / LATEST)["optimizer"]
    assert {int(state["step"]) for state in optimizer["state"].values()} == {9}  # 3 epochs of 6 steps / 2

    args = cli(tree, output, "accumulate_stopped", *accumulate, *WORKERS)
    stopped, printed = stop_at(args, "update#4", signal.SIGTERM)  # epoch 1's first update, after its step 2
    assert stopped.returncode == EXIT_INTERRUPTED and "at epoch 1 step 2" in printed, printed[-3000:]
    assert main.main(args) == 0
    assert_same_run(whole, run_dir(output, "accumulate_stopped"))


# ---------------------------------------------------------------------------------------------
# 3. Checkpoints: truncated, unreadable, disk full
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_truncated_latest_checkpoint_is_named_and_the_previous_one_resumes(tree, output, whole):
    args = cli(tree, output, "truncated", *OPTS, *WORKERS)
    folder = run_dir(output, "truncated")
    stopped, printed = stop_at(args, "update#8", signal.SIGTERM)
    assert stopped.returncode == EXIT_INTERRUPTED, printed[-3000:]
    latest = folder / LATEST
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    assert main.main(args) == 0
    log = (folder / "log.txt").read_text()
    assert f"{latest}: not a readable PyTorch checkpoint" in log
    assert f"resumed from {folder / PREVIOUS}: epoch 1 step 0" in log
    assert_same_run(whole, folder)


def test_no_readable_checkpoint_stops_with_a_clear_message(tree, output):
    folder = run_dir(output, "garbage")
    folder.mkdir(parents=True)
    (folder / LATEST).write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match=f"{folder}: none of its checkpoints is readable \\({LATEST}\\)"):
        main.main(cli(tree, output, "garbage", *OPTS))
    assert f"{folder / LATEST}: not a readable PyTorch checkpoint" in (folder / "log.txt").read_text()
    assert sorted(p.name for p in folder.iterdir()) == [LATEST, "log.txt"]  # nothing trained, nothing saved


class FullDisk(io.RawIOBase):
    """A file on a disk with ``room`` bytes left: the write that passes it raises ENOSPC."""

    def __init__(self, file: io.BufferedWriter, room: int) -> None:
        self.file, self.room = file, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            self.file.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)


@pytest.mark.slow
def test_disk_full_while_saving_is_a_clear_error_and_keeps_the_previous_checkpoint(tree, output, whole,
                                                                                    monkeypatch, capsys):
    args = cli(tree, output, "full", *OPTS)
    folder = run_dir(output, "full")

    def save_on_a_full_disk(state: dict, path: Path, keep_previous: Path | None = None) -> None:
        """Epoch 1's ckpt_latest.pth meets a full disk 4 kB in (the rest of atomic_save as it is)."""
        write = lambda f: torch.save(state, FullDisk(f, room=4096) if state["epoch"] == 1 else f)  # noqa: E731
        atomic_write(path, write, keep_previous, durable=True)

    monkeypatch.setattr(checkpoint, "atomic_save", save_on_a_full_disk)
    with pytest.raises(SystemExit) as exited:
        run_cli(lambda: main.main(args))
    assert exited.value.code == EXIT_FAILED
    error = capsys.readouterr().err
    assert (f"error: no space left on the device while writing {folder / LATEST}; the previous "
                          f"{LATEST} (if any) is unchanged: free some space and run the same command again") in error
    assert load_checkpoint_file(folder / LATEST)["epoch"] == 0 and not list(folder.glob(".*.tmp"))

    monkeypatch.undo()  # space freed: the same command resumes and ends as if nothing happened
    assert main.main(args) == 0
    assert_same_run(whole, folder)


# ---------------------------------------------------------------------------------------------
# 2. One writer per run dir
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_second_start_on_a_running_run_dir_exits_at_once_and_changes_nothing(tree, output):
    args = cli(tree, output, "busy", *OPTS)
    folder = run_dir(output, "busy")
    first = start_script("main.py", args, pause_at="update#2")
    try:
        wait_until_paused(first)
        before = snapshot(folder)
        second = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == EXIT_FAILED
        assert f"error: {folder} is in use by main.py training (pid {first.pid} on " in second.stderr
        assert "Traceback" not in second.stderr
        assert snapshot(folder) == before
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == EXIT_INTERRUPTED


HOLD_AND_FORK = """
import os, sys, time
from utils.runlock import hold_run_lock
with hold_run_lock(sys.argv[1], "holder"):
    if os.fork() == 0:  # the child says when its fork hooks have run
        print(os.getpid(), flush=True)
        time.sleep(120)
        os._exit(0)
    time.sleep(120)
"""


def test_lock_of_a_killed_process_is_taken_over_even_while_its_forked_children_live(tmp_path, caplog):
    """DataLoader and pool workers are forked children: they must not keep a dead run's lock."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_FORK, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(RunLockedError, match=f"{tmp_path} is in use by holder \\(pid {holder.pid} on "):
            with hold_run_lock(tmp_path, "second"):
                pass
        holder.kill()
        holder.wait()
        assert not has_ended(child)
        with hold_run_lock(tmp_path, "second") as lock:
            assert '"what": "second"' in lock.read_text()
        assert f"taking over the lock of holder (pid {holder.pid} on " in caplog.text
    finally:
        os.kill(child, signal.SIGKILL)
    assert not (tmp_path / LOCK_NAME).exists()  # a normal release removes it


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    with hold_run_lock(tmp_path, "first"):
        with pytest.raises(RunLockedError, match=r"in use by first \(pid"):
            with hold_run_lock(tmp_path, "second"):
                pass
    with hold_run_lock(tmp_path, "third"):
        pass


# ---------------------------------------------------------------------------------------------
# 4. prepare.py killed while it writes
# ---------------------------------------------------------------------------------------------

PREPARE = ("--size", "48", "--workers", "2", "--seed", "0")


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("raw")
    synthesize(folder, 120, seed=5, size=(160, 120))
    return folder


@pytest.fixture(scope="module")
def clean(raw, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("clean") / "ds"
    prepare(raw, dst, size=48, workers=2, seed=0)
    return dst


def contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def kill_prepare(args: list[str], point: str) -> None:
    """Start prepare.py, SIGKILL it at ``point``; returns once its workers ended too."""
    process = start_script("process/prepare.py", args, pause_at=point)
    wait_until_paused(process)
    workers = children(process.pid) if process.poll() is None else []
    process.kill()
    process.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while not all(has_ended(pid) for pid in workers):
        assert time.monotonic() < deadline, "prepare.py's workers outlived it"
        time.sleep(0.1)


@pytest.mark.slow
def test_prepare_killed_while_writing_then_rerun_equals_a_clean_run(raw, clean, tmp_path):
    dst = tmp_path / "ds"
    args = ["--src", str(raw), "--dst", str(dst), *PREPARE]
    image = pd.read_csv(clean / "train.csv")["images"].iloc[0]

    kill_prepare(args, f"writing:{image}")  # in a worker, the staged JPEG complete under its temp name
    assert list(dst.glob(f".staged/.{image}.*.tmp"))
    assert not list(dst.rglob(image))

    live = start_script("process/prepare.py", args, pause_at="writing:train.csv")  # every image written
    try:
        wait_until_paused(live)
        before = snapshot(dst)
        second = subprocess.run([sys.executable, "process/prepare.py", *args], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == EXIT_FAILED
        assert f"{dst} is in use by prepare.py (pid {live.pid} on " in second.stderr
        assert snapshot(dst) == before
    finally:
        live.kill()  # and now killed there
        live.communicate(timeout=60)

    done = subprocess.run([sys.executable, "process/prepare.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    assert contents(dst) == contents(clean)  # same files, bytes, CSVs and stats; no temp file
    for path in dst.rglob("*.jpg"):
        with Image.open(path) as jpeg:
            jpeg.load()  # whole: a truncated JPEG raises here


# ---------------------------------------------------------------------------------------------
# 5. torchrun: a dead rank stops the others
# ---------------------------------------------------------------------------------------------


def rank_of(pid: int) -> int:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(v for v in environ if v.startswith(b"RANK=")).split(b"=")[1])


@pytest.mark.slow
@pytest.mark.parametrize("dead", [1, 0])
def test_dead_torchrun_rank_stops_the_others_with_a_message_naming_it(tree, output, dead):
    args = cli(tree, output, f"ddp_dead{dead}", *OPTS)
    agent = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "main.py", *args], cwd=ROOT, env={**os.environ, PAUSE_ENV: "update#3"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_until_paused(agent)
        ranks = {rank_of(pid): pid for pid in children(agent.pid)}
        os.kill(ranks[dead], signal.SIGKILL)
        printed, _ = agent.communicate(timeout=180)  # bounded: a hang fails here
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
    assert agent.returncode != 0
    assert f"rank {1 - dead}: rank {dead} (pid {ranks[dead]}) died; stopping this rank too" in printed, printed[-4000:]
