"""Bad input and hostile conditions at the command line (issue 30): one ``error: <file>: <problem>`` line and the
exit code of docs/reliability.md, never a traceback; no config runs code, no run dir leaves OUTPUT, a stop or a
failure leaves no lock and no half-written file behind.

Exit codes and stderr are what a user sees, so most cases run the scripts as processes, on real files.
"""
from __future__ import annotations

import errno
import logging
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from evaluation.evaluate import file_keys
from helpers import ROOT, cli, load_script, make_tree, obey_file_modes, run_dir, start_script, wait_until_paused
from training.checkpoint import load_checkpoint_file
from utils.cli import run_cli
from utils.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED
from utils.files import DiskFullError
from utils.runlock import LOCK_NAME

main = load_script("main.py")
test_script = load_script("test.py")

MODEL_NAME = run_dir(Path("output"), "tag").parent.name  # the run dirs of helpers.cli: OUTPUT/MODEL_NAME/TAG


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree"), {"train": 8, "val": 4})


@pytest.fixture(scope="module")
def trained(tree, output) -> Path:
    """A one-epoch run of the tiny linear-head Swin (its run dir)."""
    assert main.main(cli(tree, output, "base", "TRAIN.EPOCHS", "1")) == 0
    return run_dir(output, "base")


def run(script: str, args: list[str], preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """``python SCRIPT ARGS`` at the repo root, output captured."""
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          preexec_fn=preexec_fn)


def error_lines(stderr: str) -> list[str]:
    """The ``error:`` lines of a command's stderr, after checking it printed no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def exit_of(call: Callable[[], int], capsys) -> tuple[int, str]:
    """The exit code and stderr of ``run_cli(call)``: a script's ``main`` as its command line ends it."""
    with pytest.raises(SystemExit) as exited:
        run_cli(call)
    return exited.value.code, capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Configs are data; run dirs stay under OUTPUT
# --------------------------------------------------------------------------------------------

# name -> (files written in tmp_path, main.py arguments after helpers.cli's, so that they win, the one error
# line); {tmp} is tmp_path. evil.py, valid yaml too (a mapping), would leave a marker file if it ever ran.
EVIL = "ran: str = open('{tmp}/ran', 'w').name\n"
BAD_CONFIGS = {
    "a_python_base": ({"evil.py": EVIL, "innocent.yaml": "BASE: ['evil.py']\n"}, ["--cfg", "{tmp}/innocent.yaml"],
                      "error: {tmp}/innocent.yaml: BASE evil.py: not a yaml config (only .yaml/.yml files are read)"),
    "a_python_cfg": ({"evil.py": EVIL}, ["--cfg", "{tmp}/evil.py"],
                     "error: {tmp}/evil.py: not a yaml config (only .yaml/.yml files are read)"),
    "a_base_cycle": ({"a.yaml": "BASE: ['b.yaml']\n", "b.yaml": "BASE: ['a.yaml']\n"}, ["--cfg", "{tmp}/a.yaml"],
                     "error: {tmp}/b.yaml: BASE includes a file that includes it (a cycle: a.yaml -> b.yaml -> "
                     "a.yaml)"),
    "a_list": ({"list.yaml": "- MODEL\n"}, ["--cfg", "{tmp}/list.yaml"],
               "error: {tmp}/list.yaml: a config is a mapping of KEY: value lines, not a list"),
    "a_type_mismatch": ({"abc.yaml": "TRAIN:\n  EPOCHS: abc\n"}, ["--cfg", "{tmp}/abc.yaml"],
                        "error: {tmp}/abc.yaml: Type mismatch (<class 'int'> vs. <class 'str'>) with values (30 vs. "
                        "abc) for config key: TRAIN.EPOCHS"),
    "a_tag_out_of_output": ({}, ["--tag", "../../.."],
                            "error: TAG (--tag) '../../..' must be a plain folder name (no '/', not '..'): the run "
                            "dir is OUTPUT/MODEL.NAME/TAG"),
    "zero_epochs": ({}, ["--opts", "TRAIN.EPOCHS", "0"], "error: TRAIN.EPOCHS must be >= 1, got 0"),
}


def bad_config_command(tree: Path, tmp_path: Path, name: str) -> tuple[list[str], str]:
    """main.py's arguments and the expected error line of BAD_CONFIGS[name], its files written in ``tmp_path``."""
    files, args, line = BAD_CONFIGS[name]
    for file, text in files.items():
        (tmp_path / file).write_text(text.format(tmp=tmp_path))
    command = [*cli(tree, tmp_path / "output", "bad"), *(arg.format(tmp=tmp_path) for arg in args)]
    return command, line.format(tmp=tmp_path)


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_bad_configs_are_one_line_and_exit_2_with_nothing_run_or_written(tree, tmp_path, name, capsys):
    args, line = bad_config_command(tree, tmp_path, name)
    code, stderr = exit_of(lambda: main.main(args), capsys)
    assert (code, error_lines(stderr)) == (EXIT_BAD_INPUT, [line])
    assert not (tmp_path / "ran").exists() and not (tmp_path / "output").exists()


@pytest.mark.slow
def test_a_python_base_never_runs_from_the_command_line(tree, tmp_path):
    """The issue's attack as a user meets it: an innocent-looking yaml whose BASE is a .py."""
    args, line = bad_config_command(tree, tmp_path, "a_python_base")
    done = run("main.py", args)
    assert (done.returncode, error_lines(done.stderr)) == (EXIT_BAD_INPUT, [line])
    assert not (tmp_path / "ran").exists() and not (tmp_path / "output").exists()


# --------------------------------------------------------------------------------------------
# Files that cannot be read or written
# --------------------------------------------------------------------------------------------

# name -> (script, arguments, the error line as a regex); {tree}, {locked} (a folder nobody may write in),
# {file} (a file), {ckpt} (a readable checkpoint) and {unreadable} (one nobody may read) are filled in.
VAL_LEAF = "{tree}/val/001000/val0000.jpg"
UNREADABLE_OR_UNWRITABLE = {
    "main_unwritable_output": ("main.py", cli("{tree}", "{locked}", "run"),
                               f"{{locked}}/{MODEL_NAME}: permission denied"),
    "main_unreadable_cfg": ("main.py", ["--cfg", "{unreadable}.yaml", *cli("{tree}", "{locked}", "run")],
                            "{unreadable}.yaml: permission denied"),
    "test_unreadable_checkpoint": ("test.py", ["--checkpoint", "{unreadable}", "--images", VAL_LEAF],
                                   r"{unreadable}: .*[Pp]ermission denied\)?"),
    "test_unwritable_output": ("test.py", ["--checkpoint", "{ckpt}", "--images", VAL_LEAF, "--output", "{locked}/out"],
                               "{locked}/out: permission denied"),
    "visual_unwritable_output": ("visual.py", ["--checkpoint", "{ckpt}", "--images", VAL_LEAF, "--classes", "scab",
                                               "--output", "{locked}/cam"], "{locked}/cam: permission denied"),
}
# A file where a folder is wanted: no permissions involved, so these run in this process.
FILES_IN_THE_WAY = {
    "main_output_is_a_file": ("main.py", cli("{tree}", "{file}", "run"),
                              f"{{file}}/{MODEL_NAME}/run: a part of this path is a file, not a folder"),
    "test_output_is_a_file": ("test.py", ["--checkpoint", "{ckpt}", "--images", VAL_LEAF, "--output", "{file}"],
                              "{file}: exists and is not a folder"),
    "visual_output_is_a_file": ("visual.py", ["--checkpoint", "{ckpt}", "--images", VAL_LEAF, "--classes", "scab",
                                              "--output", "{file}"], "{file}: exists and is not a folder"),
}


@pytest.fixture
def bad_paths(tree, trained, tmp_path) -> dict[str, str]:
    """The placeholders of the tables above: a read-only folder, a plain file, unreadable copies of a
    checkpoint and of a config."""
    locked, file, unreadable = tmp_path / "locked", tmp_path / "file", tmp_path / "unreadable.pth"
    locked.mkdir(mode=0o555)
    file.write_text("a file\n")
    unreadable.write_bytes((trained / "ckpt_best.pth").read_bytes())
    Path(f"{unreadable}.yaml").write_text("TRAIN:\n  EPOCHS: 1\n")
    for path in (unreadable, Path(f"{unreadable}.yaml")):
        path.chmod(0)
    return {"tree": str(tree), "locked": str(locked), "file": str(file), "unreadable": str(unreadable),
            "ckpt": str(trained / "ckpt_best.pth")}


def check_one_error_and_nothing_written(code: int, stderr: str, line: str, paths: dict[str, str]) -> None:
    """Exit 2, one ``error:`` line matching ``line`` (its placeholders filled in), the folder and file untouched."""
    assert code == EXIT_BAD_INPUT, stderr[-3000:]
    lines = error_lines(stderr)
    escaped = {key: re.escape(path) for key, path in paths.items()}
    assert len(lines) == 1 and re.fullmatch("error: " + line.format(**escaped), lines[0]), lines
    assert not any(Path(paths["locked"]).iterdir()) and Path(paths["file"]).read_text() == "a file\n"


@pytest.mark.slow
@pytest.mark.parametrize("script, args, line", UNREADABLE_OR_UNWRITABLE.values(), ids=list(UNREADABLE_OR_UNWRITABLE))
def test_unreadable_and_unwritable_files_are_one_line_and_exit_2(bad_paths, script, args, line):
    done = run(script, [arg.format(**bad_paths) for arg in (*args, "--device", "cpu")], preexec_fn=obey_file_modes)
    check_one_error_and_nothing_written(done.returncode, done.stderr, line, bad_paths)


@pytest.mark.parametrize("script, args, line", FILES_IN_THE_WAY.values(), ids=list(FILES_IN_THE_WAY))
def test_a_file_where_a_folder_is_wanted_is_one_line_and_exit_2(bad_paths, script, args, line, capsys):
    argv = [arg.format(**bad_paths) for arg in (*args, "--device", "cpu")]
    code, stderr = exit_of(lambda: load_script(script).main(argv), capsys)
    check_one_error_and_nothing_written(code, stderr, line, bad_paths)


@pytest.mark.slow
def test_a_file_size_limit_is_a_full_disk(tree, tmp_path):
    """``ulimit -f`` (EFBIG) stops a run as a full disk does: exit 1, one line, no temp file left."""
    limit = 100 * 1024  # above the log and the curves, below a checkpoint of the tiny Swin

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = run("main.py", cli(tree, tmp_path, "limited", "TRAIN.EPOCHS", "1"), preexec_fn=limited)
    folder = run_dir(tmp_path, "limited")
    assert done.returncode == EXIT_FAILED, done.stderr[-3000:]
    assert error_lines(done.stderr) == [
        f"error: file size limit exceeded (ulimit -f) while writing {folder / 'ckpt_best.pth'}; the previous "
        "ckpt_best.pth (if any) is unchanged: raise the limit and run the same command again"]
    assert not list(folder.glob(".*.tmp")) and not list(folder.glob("*.pth"))


RUN_CLI = {
    "unreadable": (PermissionError(errno.EACCES, "Permission denied", "/x/f"), EXIT_BAD_INPUT,
                   "error: /x/f: permission denied"),
    "a_folder_for_a_file": (IsADirectoryError(errno.EISDIR, "Is a directory", "/x/d"), EXIT_BAD_INPUT,
                            "error: /x/d: is a folder, not a file"),
    "a_file_in_the_path": (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/x/f/g"), EXIT_BAD_INPUT,
                           "error: /x/f/g: a part of this path is a file, not a folder"),
    "a_missing_file_opened": (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/f"), EXIT_BAD_INPUT,
                              "error: /x/f: no such file or directory"),
    "a_full_disk_outside_atomic_writes": (OSError(errno.ENOSPC, "No space left on device", "/x/f"), EXIT_FAILED,
                                          "error: /x/f: no space left on device"),
    "a_quota": (DiskFullError(Path("/x/ckpt.pth"), errno.EDQUOT), EXIT_FAILED,
                "error: disk quota exceeded while writing /x/ckpt.pth; the previous ckpt.pth (if any) is unchanged: "
                "free some space and run the same command again"),
}


@pytest.mark.parametrize("error, code, line", RUN_CLI.values(), ids=list(RUN_CLI))
def test_run_cli_names_the_file_of_an_os_error(error, code, line, capsys):
    def failing() -> int:
        raise error

    assert exit_of(failing, capsys) == (code, line + "\n")


def test_run_cli_leaves_other_os_errors_as_they_are():
    """An I/O error is no user mistake: its traceback stays."""
    def failing() -> int:
        raise OSError(errno.EIO, "Input/output error", "/x/f")

    with pytest.raises(OSError, match="Input/output error"):
        run_cli(failing)


# --------------------------------------------------------------------------------------------
# Stops, re-runs and diverging runs of main.py
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_during_start_up_exits_130_and_releases_the_lock(tree, tmp_path):
    process = start_script("main.py", cli(tree, tmp_path, "stopped"), pause_at="start-up")
    wait_until_paused(process)
    lock = run_dir(tmp_path, "stopped") / LOCK_NAME
    assert lock.is_file()  # held while it starts
    process.send_signal(signal.SIGTERM)
    printed = process.communicate(timeout=60)[0]
    assert process.returncode == EXIT_INTERRUPTED, printed[-3000:]
    assert printed.strip().endswith("interrupted") and "Traceback" not in printed
    assert not lock.exists()


def test_resume_is_only_where_it_means_resuming(tree, trained, tmp_path, capsys):
    """--resume trains on (main.py) or, in test.py only, is the fork's name for --checkpoint; visual.py,
    export.py and app.py refuse it, and main.py's --checkpoint is only the file --eval reads."""
    ckpt = str(trained / "ckpt_best.pth")
    for flag in ("--checkpoint", "--resume"):
        args = [flag, ckpt, "--split", "val", "--device", "cpu", "--output", str(tmp_path / flag)]
        assert test_script.main(args) == 0
    assert (tmp_path / "--resume" / "predictions.csv").read_bytes() == (
        tmp_path / "--checkpoint" / "predictions.csv").read_bytes()
    for script in ("visual.py", "export.py", "app.py"):
        with pytest.raises(SystemExit) as refused:
            load_script(script).parse_args(["--resume", ckpt])
        assert refused.value.code == 2 and "unrecognized arguments: --resume" in capsys.readouterr().err, script
    with pytest.raises(SystemExit) as refused:
        main.parse_args(cli(tree, tmp_path, "train", extra=("--checkpoint", ckpt)))
    assert refused.value.code == 2 and "--checkpoint is the file --eval reads" in capsys.readouterr().err


@pytest.mark.parametrize("opts, changed", [(("MODEL.SWIN.EMBED_DIM", "24"), "MODEL.SWIN.EMBED_DIM 16 -> 24"),
                                           (("MODEL.HEAD", "arcface"), "MODEL.HEAD linear -> arcface")])
def test_rerun_with_a_config_of_another_model_names_the_checkpoint(tree, output, trained, opts, changed, capsys):
    """Auto-resume into a run dir of another model: one line, not torch's size-mismatch traceback."""
    latest = trained / "ckpt_latest.pth"
    before = latest.read_bytes(), (trained / "config.yaml").read_text()
    code, stderr = exit_of(lambda: main.main(cli(tree, output, "base", "TRAIN.EPOCHS", "1", *opts)), capsys)
    assert code == EXIT_BAD_INPUT
    assert error_lines(stderr) == [
        f"error: {latest}: the config changed since this checkpoint was saved, it cannot resume it (changed: "
        f"{changed}); train this config under another --tag, or move the run dir away"]
    assert (latest.read_bytes(), (trained / "config.yaml").read_text()) == before


def test_a_diverging_run_stops_through_the_non_finite_loss_path_and_keeps_the_last_good_checkpoint(tree, output):
    """An infinite learning rate, reached after the warm-up epoch: with one update per epoch the weights are
    NaN by validation, whose probabilities used to reach scikit-learn ('Input contains NaN', exit 2)."""
    one_update_per_epoch = ("TRAIN.ACCUMULATION_STEPS", "2")  # 8 images, batches of 4
    code = main.main(cli(tree, output, "diverging", "TRAIN.BASE_LR", "1e999", *one_update_per_epoch))
    folder = run_dir(output, "diverging")
    assert code == EXIT_FAILED
    assert ("non-finite validation loss (nan) at the end of epoch 1: stopping (lower TRAIN.BASE_LR, keep "
            f"TRAIN.CLIP_GRAD on, or check the data); the last good checkpoint is kept: {folder / 'ckpt_latest.pth'}"
            ) in (folder / "log.txt").read_text()
    assert load_checkpoint_file(folder / "ckpt_latest.pth")["epoch"] == 0
    assert pd.read_csv(folder / "history.csv")["epoch"].tolist() == [0]


# --------------------------------------------------------------------------------------------
# Submission keys of test.py --images
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("files, keys", [
    (["p/a.jpg", "p/b.jpg"], ["a.jpg", "b.jpg"]),  # distinct names: Kaggle's keys, as before
    (["p/a/x.jpg", "p/b/x.jpg", "p/b/y.jpg"], ["a/x.jpg", "b/x.jpg", "b/y.jpg"]),
    (["p/x.jpg", "p/sub/x.jpg"], ["x.jpg", "sub/x.jpg"]),
    (["p/one/../a/x.jpg", "q/x.jpg"], ["p/a/x.jpg", "q/x.jpg"]),
])
def test_file_keys_are_names_unless_two_files_share_one(tmp_path, files, keys):
    assert file_keys([tmp_path / name for name in files], logging.getLogger("test_bad_cli")) == keys


def test_two_photos_of_one_name_get_two_submission_keys(trained, tree, tmp_path):
    photos = tmp_path / "photos"
    for folder, leaf in (("a", "001000/val0000.jpg"), ("b", "000001/val0001.jpg")):
        (photos / folder).mkdir(parents=True)
        (photos / folder / "x.jpg").write_bytes((tree / "val" / leaf).read_bytes())
    args = ["--checkpoint", str(trained / "ckpt_best.pth"), "--device", "cpu", "--output", str(tmp_path / "out")]
    assert test_script.main([*args, "--images", str(photos)]) == 0
    assert pd.read_csv(tmp_path / "out" / "submission.csv")["image"].tolist() == ["a/x.jpg", "b/x.jpg"]
    assert test_script.main([*args, "--images", str(photos / "a")]) == 0  # one folder: Kaggle's keys
    assert pd.read_csv(tmp_path / "out" / "submission.csv")["image"].tolist() == ["x.jpg"]
