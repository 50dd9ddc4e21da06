"""Bad data and misuse at prepare and at the readers of its tree: nothing lost, nothing half-built used, one line.

process/prepare.py never writes where its source is (``--dst`` equal to, inside or above ``--src``,
symbolic links included, ``--force`` or not), refuses names it could not write or that the loader would
skip, turns permission and file-size failures into one line, and warns of an empty split; main.py,
test.py and the datasets refuse a tree a killed prepare left, and an empty split they need.
"""
from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data.dataset import MultiLabelImageFolder, TreeSplit
from data.folds import IN_PROGRESS
from helpers import ROOT, cli, make_tree, run_script, save_run, snapshot, tiny_swin_config
from models import build_model
from process.sources import MAX_NAME_BYTES, InputError
from process.tree import prepare

PREPARE = "process/prepare.py"
LABELS = ("scab", "healthy", "rust", "complex", "frog_eye_leaf_spot", "powdery_mildew")


# ----------------------------------------------------------------------------- sources and runs


def photo(path: Path, seed: int, size: tuple[int, int] = (48, 32)) -> None:
    """A JPEG of random 8-pixel blocks (no two alike, so no duplicate groups)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = np.random.default_rng(seed).integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    Image.fromarray(blocks).resize(size, Image.Resampling.NEAREST).save(path, "JPEG", quality=90)


def kaggle(src: Path, names: list[str] | None = None, size: tuple[int, int] = (48, 32)) -> Path:
    """SRC as the Kaggle layout: train.csv + train_images/ (one photo per name, labels cycled)."""
    names = names or [f"k{i}.jpg" for i in range(6)]
    for i, name in enumerate(names):
        photo(src / "train_images" / name, i, size)
    pd.DataFrame({"image": names, "labels": [LABELS[i % 6] for i in range(len(names))]}).to_csv(
        src / "train.csv", index=False)
    return src


def pre_split(src: Path, names: list[str] | None = None) -> Path:
    """SRC as a pre-split layout: {train,val,test}/ with one CSV and images/ each; ``names`` go to train."""
    for s, split in enumerate(("train", "val", "test")):
        listed = names if names and split == "train" else [f"{split}{i}.jpg" for i in range(2)]
        for i, name in enumerate(listed):
            photo(src / split / "images" / name, 10 * s + i)
        pd.DataFrame({"image": listed, "labels": [LABELS[i % 6] for i in range(len(listed))]}).to_csv(
            src / split / f"{split}.csv", index=False)
    return src


LAYOUTS = {"kaggle": kaggle, "pre-split": pre_split}


def files_and_folders(root: Path) -> tuple[dict, list]:
    """Every file under ``root`` (hidden ones too) with its inode, mtime and size, and every folder."""
    return snapshot(root), sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())


def state(root: Path) -> tuple[tuple[dict, list], dict]:
    """``files_and_folders`` and the content hash of every file: byte-identical means equal states."""
    hashes = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in sorted(root.rglob("*")) if p.is_file()}
    return files_and_folders(root), hashes


def script(name: str, *args: str, preexec=None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``python NAME ARGS`` in a subprocess at the repo root (after ``prefix``), output captured."""
    return subprocess.run([*prefix, sys.executable, name, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, preexec_fn=preexec)


def lines_of(stderr: str, prefix: str) -> list[str]:
    """The lines of ``stderr`` that start with ``prefix`` (progress bars share it, redrawn with a carriage return)."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith(prefix)]


def one_error(done: subprocess.CompletedProcess, code: int) -> str:
    """The single ``error:`` line of a run that exited with ``code``, and no traceback."""
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = lines_of(done.stderr, "error:")
    assert len(lines) == 1, done.stderr
    return lines[0]


# ----------------------------------------------------------------------------- DST where the source is


def _same(tmp: Path, make) -> tuple[Path, Path]:
    src = make(tmp / "data")
    return src, src


def _inside(tmp: Path, make) -> tuple[Path, Path]:
    src = make(tmp / "data")
    return src, src / "prepared"


def _inside_its_images(tmp: Path, make) -> tuple[Path, Path]:
    src = make(tmp / "data")
    return src, next(p for p in sorted(src.rglob("*")) if p.is_dir())


def _above_as_train(tmp: Path, make) -> tuple[Path, Path]:
    src = make(tmp / "data" / "train")
    return src, tmp / "data"


def _symlink(tmp: Path, make) -> tuple[Path, Path]:
    src = make(tmp / "data")
    (tmp / "link").symlink_to(src, target_is_directory=True)
    return src, tmp / "link"


PLACES = {"dst is src": _same, "dst inside src": _inside, "dst is src's image folder": _inside_its_images,
          "src is dst/train": _above_as_train, "dst is a link to src": _symlink}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("place", list(PLACES))
def test_dst_where_the_source_is_is_refused_with_force_before_any_write(tmp_path, layout, place):
    src, dst = PLACES[place](tmp_path, LAYOUTS[layout])
    before = state(tmp_path)
    done = script(PREPARE, "--src", str(src), "--dst", str(dst), "--force", "--size", "32", "--workers", "1")
    line = one_error(done, 2)
    assert line.startswith(f"error: {dst}: ") and "--src" in line and "--force" not in line, line
    assert state(tmp_path) == before


def test_a_dst_beside_the_source_with_a_similar_name_is_fine(tmp_path):
    src = kaggle(tmp_path / "data")
    stats = prepare(src, tmp_path / "data-prepared", size=32, workers=1)
    assert stats["total"]["images"] == 6


@pytest.mark.parametrize("relative, message", [("file", r"file: exists and is not a folder"),
                                               ("file/ds", r"file/ds: .*file exists and is not a folder")])
def test_a_dst_that_is_or_is_under_a_file_is_one_line(tmp_path, relative, message):
    src = kaggle(tmp_path / "data")
    (tmp_path / "file").write_text("mine")
    before = state(tmp_path)
    with pytest.raises(InputError, match=message):
        prepare(src, tmp_path / relative, size=32, workers=1, force=True)
    assert state(tmp_path) == before


# ----------------------------------------------------------------------------- names the tree cannot hold


NAMES = {
    "hidden": (".hidden.jpg", r"hidden image name \(starting with '\.'\) in line 2 \(\.hidden\.jpg\)"),
    "overlong": ("x" * 296 + ".jpg", rf"image name over {MAX_NAME_BYTES} bytes in line 2 \(x{{60}}\.\.\.\)"),
    "longest": ("y" * (MAX_NAME_BYTES - 3) + ".png", rf"image name over {MAX_NAME_BYTES} bytes in line 2"),
    "NUL": ("a\0b.jpg", r"image name with a NUL byte in line 2 \(a\\x00b\.jpg\)"),
}


def _csv_of(src: Path, layout: str) -> Path:
    return src / "train.csv" if layout == "kaggle" else src / "train" / "train.csv"


def add_first_row(csv: Path, name: str) -> None:
    """``name`` (labelled scab) as the first row of ``csv``: line 2."""
    table = pd.read_csv(csv)
    table.loc[-1] = [name, "scab"]
    table.sort_index().to_csv(csv, index=False)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("case", list(NAMES))
def test_a_name_the_tree_cannot_hold_is_refused_at_the_csv(tmp_path, layout, case):
    name, message = NAMES[case]
    src = tmp_path / "src"
    LAYOUTS[layout](src, ["fine.jpg"])
    csv = _csv_of(src, layout)
    add_first_row(csv, name)
    if "\0" not in name and len(name) < 255:  # the hidden photo exists: it would have been written
        photo(csv.parent / ("train_images" if layout == "kaggle" else "images") / name, 99)
    with pytest.raises(InputError, match=f"^{csv}: {message}"):
        prepare(src, tmp_path / "ds", size=32, workers=1)
    assert not (tmp_path / "ds").exists()


def test_the_longest_name_allowed_is_written(tmp_path):
    name = "z" * (MAX_NAME_BYTES - 4) + ".png"  # <stem>.jpg: exactly MAX_NAME_BYTES
    src = kaggle(tmp_path / "src", [name])
    prepare(src, tmp_path / "ds", size=32, val=0, test=0, workers=1)
    assert [p.name for p in (tmp_path / "ds").rglob("z*")] == [name[:-4] + ".jpg"]


def test_the_cli_refuses_an_overlong_name_in_one_line_without_a_worker(tmp_path):
    src = kaggle(tmp_path / "src", ["fine.jpg"])
    add_first_row(src / "train.csv", "x" * 300 + ".jpg")
    done = script(PREPARE, "--src", str(src), "--dst", str(tmp_path / "ds"), "--workers", "1")
    line = one_error(done, 2)
    assert line.startswith(f"error: {src / 'train.csv'}: image name over {MAX_NAME_BYTES} bytes in line 2")
    assert len(line) < 300 and not (tmp_path / "ds").exists()


# ----------------------------------------------------------------------------- permissions and file sizes


def without_root_bypass() -> tuple[str, ...]:
    """A command prefix under which file permissions hold: root's DAC capabilities dropped (setpriv)."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be denied")
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search")


def _unreadable_csv(src: Path, tmp: Path) -> tuple[Path, Path]:
    (src / "train.csv").chmod(0)
    return tmp / "ds", src / "train.csv"


def _unreadable_image(src: Path, tmp: Path) -> tuple[Path, Path]:
    (src / "train_images" / "k3.jpg").chmod(0)
    return tmp / "ds", src / "train_images" / "k3.jpg"


def _unwritable_parent(src: Path, tmp: Path) -> tuple[Path, Path]:
    (tmp / "locked").mkdir()
    (tmp / "locked").chmod(0o555)
    return tmp / "locked" / "ds", tmp / "locked" / "ds"


def _unwritable_dst(src: Path, tmp: Path) -> tuple[Path, Path]:
    (tmp / "ds").mkdir()
    (tmp / "ds").chmod(0o555)
    return tmp / "ds", tmp / "ds" / ".lock"


PERMISSIONS = {"unreadable CSV": _unreadable_csv, "unreadable image": _unreadable_image,
               "unwritable parent of DST": _unwritable_parent, "unwritable DST": _unwritable_dst}


@pytest.mark.parametrize("case", list(PERMISSIONS))
def test_a_permission_denied_is_one_line_naming_the_file(tmp_path, case):
    prefix = without_root_bypass()
    src = kaggle(tmp_path / "src")
    dst, named = PERMISSIONS[case](src, tmp_path)
    before = files_and_folders(tmp_path)  # contents unread: the files are unreadable to non-root users
    done = script(PREPARE, "--src", str(src), "--dst", str(dst), "--size", "32", "--workers", "1",
                  prefix=prefix)
    assert one_error(done, 2).startswith(f"error: {named}: "), done.stderr
    assert files_and_folders(tmp_path) == before


def test_a_file_size_limit_is_a_full_disk_and_no_truncated_image_is_placed(tmp_path):
    src = kaggle(tmp_path / "src", size=(320, 240))  # each resized JPEG is well over the 8 KiB limit

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    done = script(PREPARE, "--src", str(src), "--dst", str(tmp_path / "ds"), "--size", "200", "--workers", "1",
                  preexec=limit_file_size)
    assert "ulimit -f" in one_error(done, 1)
    assert not [p for p in (tmp_path / "ds").rglob("*.jpg") if p.is_file()]  # Pillow wrote 8 KiB and said nothing
    assert (tmp_path / "ds" / IN_PROGRESS).exists()  # unfinished: readers refuse it, the next run redoes it


# ----------------------------------------------------------------------------- a tree a killed prepare left


@pytest.fixture(scope="module")
def half_tree(tmp_path_factory) -> Path:
    """A tree as a prepare killed after placing its images leaves it: the marker, no stats.json."""
    tree = make_tree(tmp_path_factory.mktemp("half") / "ds", {"train": 8, "val": 4, "test": 4})
    (tree / IN_PROGRESS).write_text("fingerprint of the killed run")
    return tree


@pytest.mark.parametrize("open_it", [
    lambda tree: MultiLabelImageFolder(tree / "test"),
    lambda tree: TreeSplit(tree, "val").samples(),
    lambda tree: TreeSplit(tree, "val", fold=0),
], ids=["test folder", "val split", "fold"])
def test_a_tree_without_its_completion_marker_is_refused(half_tree, open_it):
    with pytest.raises(ValueError, match=f"^{half_tree}: prepare did not finish: re-run it$"):
        open_it(half_tree)


def test_main_refuses_to_train_on_a_tree_prepare_did_not_finish(half_tree, tmp_path):
    done = run_script(cli(half_tree, tmp_path / "out", "half"))
    assert one_error(done, 2) == f"error: {half_tree}: prepare did not finish: re-run it"


def test_a_finished_tree_reopens_after_the_marker_goes(tmp_path):
    tree = make_tree(tmp_path / "ds", {"val": 3})
    (tree / IN_PROGRESS).write_text("running")
    with pytest.raises(ValueError, match="prepare did not finish"):
        MultiLabelImageFolder(tree / "val")
    (tree / IN_PROGRESS).unlink()
    assert len(MultiLabelImageFolder(tree / "val")) == 3


# ----------------------------------------------------------------------------- empty splits


@pytest.fixture(scope="module")
def sparse(tmp_path_factory) -> tuple[Path, str]:
    """Six photos of six label combinations: one each is too few for val and test (stderr of prepare)."""
    root = tmp_path_factory.mktemp("sparse")
    done = script(PREPARE, "--src", str(kaggle(root / "src")), "--dst", str(root / "ds"), "--size", "32",
                  "--workers", "1")
    assert done.returncode == 0, done.stderr
    return root / "ds", done.stderr


def test_prepare_warns_of_each_empty_split_it_was_asked_for(sparse):
    dst, stderr = sparse
    warnings = lines_of(stderr, "warning:")
    assert [w.split(":")[1].strip() for w in warnings] == [str(dst / "val"), str(dst / "test")]
    assert all("empty split (none of the 6 usable images went there)" in w for w in warnings)


def test_a_split_left_empty_on_purpose_is_not_warned(tmp_path, caplog):
    with caplog.at_level("INFO", logger="prepare"):
        prepare(kaggle(tmp_path / "src"), tmp_path / "ds", size=32, val=0, test=0, workers=1)
    assert "wrote 6 images" in caplog.text and not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize("split", ["val", "test"])
def test_an_empty_split_is_refused_naming_it(sparse, split):
    dst, _ = sparse
    with pytest.raises(ValueError, match=f"^{dst / split}: empty split"):
        MultiLabelImageFolder(TreeSplit(dst, split))


def test_test_py_refuses_an_empty_test_split_in_one_line(sparse, tmp_path):
    dst, _ = sparse
    config = tiny_swin_config(tmp_path / "out", "empty", dst)
    run = save_run(config, build_model(config), None)
    done = script("test.py", "--checkpoint", str(run / "ckpt_best.pth"), "--data-path", str(dst), "--split", "test",
                  "--device", "cpu")
    assert one_error(done, 2).startswith(f"error: {dst / 'test'}: empty split")
