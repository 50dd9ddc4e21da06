"""process/prepare.py and its library (process.sources, process.tree): the one-hot tree, labels exact for every
image, splits, links, idempotence, bad input."""
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data.images import image_failure
from data.labels import CLASSES, labels_to_codes, labels_to_string, labels_to_vector
from helpers import snapshot
from process.sources import InputError
from process.splits import allocate, assign_splits
from process.synthesize import synthesize
from process.tree import SAMPLES_PER_COMBINATION, SPLITS, NoUsableImages, prepare, sample_tiles

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


# ----------------------------------------------------------------------------- helpers


def tree_index(dst: Path) -> dict[str, tuple[set, set]]:
    """image name -> (splits holding it, code folders holding it), read from the files alone."""
    index: dict[str, tuple[set, set]] = {}
    for path in dst.glob("*/*/*.jpg"):
        splits, codes = index.setdefault(path.name, (set(), set()))
        splits.add(path.parts[-3])
        codes.add(path.parts[-2])
    return index


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "process/prepare.py", *args], cwd=ROOT, capture_output=True, text=True)


def jpeg(path: Path, size=(60, 40)) -> Path:
    """A small JPEG of coloured blocks drawn from its name: distinct files never look like copies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = np.random.default_rng(zlib.crc32(path.name.encode())).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    Image.fromarray(blocks).resize(size, Image.Resampling.NEAREST).save(path, "JPEG", quality=90)
    return path


def kaggle(src: Path, labels: dict[str, str], images: bool = True) -> Path:
    """A Kaggle-layout folder with the given ``image -> labels`` rows and small distinct JPEGs."""
    (src / "train_images").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"image": list(labels), "labels": list(labels.values())}).to_csv(src / "train.csv", index=False)
    for name in labels if images else []:
        jpeg(src / "train_images" / name)
    return src


GOOD = {f"good{i}.jpg": combo for i, combo in enumerate(["scab", "healthy", "rust frog_eye_leaf_spot", "complex",
                                                          "powdery_mildew", "scab frog_eye_leaf_spot complex"])}


# ----------------------------------------------------------------------------- generated Kaggle layout


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """240 synthetic 160x120 leaves prepared at --size 64 with 2 workers."""
    raw = tmp_path_factory.mktemp("raw")
    source = synthesize(raw, 240, seed=3, size=(160, 120))
    dst = tmp_path_factory.mktemp("prepared") / "ds"
    stats = prepare(raw, dst, size=SIZE, workers=2, seed=0)
    return raw, dst, source.set_index("image")["labels"], stats


def test_tree_holds_every_image_in_one_split_with_exactly_its_labels(generated):
    _, dst, source, stats = generated
    index = tree_index(dst)
    assert set(index) == set(source.index)
    for name, labels in source.items():
        splits, codes = index[name]
        assert len(splits) == 1, f"{name} in {splits}"
        assert codes == set(labels_to_codes(labels)), name
    assert sorted(p.name for p in dst.iterdir()) == sorted(
        [*SPLITS, *(f"{s}.csv" for s in SPLITS), "stats.json", "label_distribution.png", "labels_per_image.png",
         "samples.png", "duplicates.csv"])
    assert stats["total"]["images"] == 240 and stats["skipped"] == []


def test_pictures_of_the_data_show_what_the_tree_holds(generated):
    """labels_per_image.png counts what stats.json counts (from the split CSVs); samples.png has one row per label
    combination of the tree, most frequent first, with its first leaves by name, each a file of the tree."""
    _, dst, source, stats = generated
    for split in SPLITS:
        per_image = pd.read_csv(dst / f"{split}.csv")[list(CLASSES)].sum(axis=1).value_counts()
        assert stats["splits"][split]["labels_per_image"] == {str(k): int(v) for k, v in per_image.items()}
    split_of = {name: split for split in SPLITS for name in pd.read_csv(dst / f"{split}.csv")["images"]}
    rows = pd.DataFrame({"output": [f"{Path(n).stem}.jpg" for n in source.index], "labels": source.to_numpy()})
    rows["split"] = rows["output"].map(split_of)
    sheet, titles = sample_tiles(rows, dst)
    combinations = source.value_counts()
    assert len(sheet) == len(titles) == len(combinations) == 12
    assert [title for title, _ in titles] == [f"{labels} ({n} image{'s' if n > 1 else ''})"
                                              for labels, n in combinations.items()]
    for row, (labels, _) in zip(sheet, combinations.items()):
        firsts = sorted(rows.loc[rows["labels"] == labels, "output"])[:SAMPLES_PER_COMBINATION]
        assert [tile.picture.name for tile in row] == firsts and all(tile.picture.is_file() for tile in row)
    for name in ("labels_per_image.png", "samples.png"):
        with Image.open(dst / name) as image:
            assert image.format == "PNG" and min(image.size) > 300


def test_split_csvs_match_the_tree_and_the_source(generated):
    _, dst, source, stats = generated
    index = tree_index(dst)
    seen = []
    for split in SPLITS:
        table = pd.read_csv(dst / f"{split}.csv")
        assert list(table.columns) == ["images", *CLASSES]
        assert list(table["images"]) == sorted(table["images"])
        for row in table.itertuples(index=False):
            assert index[row.images][0] == {split}
            np.testing.assert_array_equal(np.array(row[1:], np.float32), labels_to_vector(source[row.images]))
        seen += list(table["images"])
        assert stats["splits"][split]["images"] == len(table)
        assert stats["splits"][split]["labels"] == {c: int(table[c].sum()) for c in CLASSES}
    assert sorted(seen) == sorted(source.index)


def test_multi_label_images_are_hard_links_of_one_file(generated):
    _, dst, source, _ = generated
    multi = [name for name, labels in source.items() if len(labels.split()) > 1]
    assert multi
    for name in multi:
        copies = list(dst.glob(f"*/*/{name}"))
        assert len(copies) == len(source[name].split())
        assert len({p.stat().st_ino for p in copies}) == 1
        assert all(p.stat().st_nlink == len(copies) for p in copies)


def test_split_is_stratified_by_label_combination(generated):
    _, dst, source, stats = generated
    by_combo = source.map(labels_to_string).value_counts()  # stats spell combinations in CLASSES order
    assert len(by_combo) == 12
    for combo, n in by_combo.items():
        for split, fraction in zip(SPLITS, (0.7, 0.15, 0.15)):
            got = stats["splits"][split]["combinations"].get(combo, 0)
            assert abs(got - n * fraction) < 1, (combo, split, got, n)
    assert abs(stats["splits"]["val"]["images"] - 240 * 0.15) <= 6


def test_images_are_rgb_jpegs_with_the_shorter_side_at_size(generated):
    _, dst, _, _ = generated
    for path in list(dst.glob("*/*/*.jpg"))[:40]:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert min(image.size) == SIZE and image.size == (85, 64)


def test_second_run_does_no_work_and_changes_nothing(generated, caplog):
    raw, dst, _, stats = generated
    before = snapshot(dst)
    with caplog.at_level("INFO", logger="prepare"):
        again = prepare(raw, dst, size=SIZE, workers=2, seed=0)
    assert "already prepared" in caplog.text
    assert snapshot(dst) == before
    assert again == json.loads(json.dumps(stats))


def test_other_settings_on_a_finished_tree_are_refused_without_force(generated):
    raw, dst, _, _ = generated
    before = snapshot(dst)
    with pytest.raises(InputError, match="--force"):
        prepare(raw, dst, size=48, workers=2)
    assert snapshot(dst) == before


def test_without_hard_links_the_other_label_folders_get_whole_copies(tmp_path, monkeypatch):
    def no_links(*_):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    src = kaggle(tmp_path / "src", {"a.jpg": "scab complex"})
    prepare(src, tmp_path / "ds", size=32, val=0, test=0, workers=1)
    first, copy = (tmp_path / "ds" / "train" / code / "a.jpg" for code in ("100000", "000001"))
    assert copy.read_bytes() == first.read_bytes() and copy.stat().st_ino != first.stat().st_ino
    assert sorted(p.name for p in (tmp_path / "ds" / "train").rglob("*")) == ["000001", "100000", "a.jpg", "a.jpg"]


def test_force_rebuilds_and_a_killed_run_is_redone(tmp_path):
    raw = tmp_path / "raw"
    synthesize(raw, 24, seed=1, size=(96, 64))
    dst = tmp_path / "ds"
    prepare(raw, dst, size=32, workers=1)
    before = snapshot(dst)
    prepare(raw, dst, size=32, workers=1, force=True)
    after = snapshot(dst)
    assert set(after) == set(before)
    assert all(after[k][:2] != before[k][:2] for k in after if k.endswith(".jpg"))
    # A run killed before stats.json leaves its marker: the next plain run rebuilds the tree.
    (dst / "stats.json").unlink()
    (dst / ".prepare-in-progress").write_text("killed")
    (dst / "train" / "stray.jpg").write_bytes(b"half")
    stats = prepare(raw, dst, size=32, workers=1)
    assert stats["total"]["images"] == 24
    assert set(snapshot(dst)) == set(before)


def test_assign_splits_is_deterministic_and_independent_of_row_order():
    rows = pd.DataFrame({"output": [f"{i:03d}.jpg" for i in range(120)],
                         "labels": ["scab"] * 70 + ["rust"] * 40 + ["rust complex"] * 7 + ["complex"] * 3})
    a = assign_splits(rows, 0.15, 0.15, seed=0)
    shuffled = rows.sample(frac=1, random_state=1)
    b = assign_splits(shuffled, 0.15, 0.15, seed=0)
    pd.testing.assert_series_equal(a, b.sort_index())
    assert not a.equals(assign_splits(rows, 0.15, 0.15, seed=1))
    assert a[rows["labels"] == "rust complex"].value_counts().to_dict() == {"train": 5, "val": 1, "test": 1}
    assert allocate(3, (0.7, 0.15, 0.15)) == [2, 1, 0] and allocate(1, (0.7, 0.15, 0.15)) == [1, 0, 0]


# ----------------------------------------------------------------------------- pre-split layout


PRE_SPLIT = {
    "train": {"t1.jpg": "scab", "t2.jpg": "healthy", "t3.jpg": "rust frog_eye_leaf_spot", "t4.jpg": "complex"},
    "val": {"v1.jpg": "powdery_mildew complex", "v2.jpg": "scab"},
    "test": {"s1.jpg": "frog_eye_leaf_spot scab complex", "s2.jpg": "healthy"},
}


def write_pre_split(src: Path, one_hot: bool, beside_csv: bool) -> None:
    """SRC/{train,val,test}/ with one CSV each, as label strings or 0/1 columns in a shuffled order."""
    columns = ["images", "scab", "healthy", "frog_eye_leaf_spot", "rust", "complex", "powdery_mildew"]
    for split, labels in PRE_SPLIT.items():
        folder = src / split
        for name in labels:
            jpeg(folder / name if beside_csv else folder / "images" / name, size=(90, 60))
        if one_hot:
            rows = [[name, *(int(c in lab.split()) for c in columns[1:])] for name, lab in labels.items()]
            table = pd.DataFrame(rows, columns=columns)
        else:
            table = pd.DataFrame({"image": list(labels), "labels": list(labels.values())})
        table.to_csv(folder / f"{split}_label.csv", index=False)


@pytest.mark.parametrize("one_hot, beside_csv", [(False, False), (True, True), (True, False)])
def test_pre_split_layout_keeps_its_split_and_labels(tmp_path, one_hot, beside_csv):
    write_pre_split(tmp_path / "src", one_hot, beside_csv)
    stats = prepare(tmp_path / "src", tmp_path / "ds", size=32, workers=2)
    index = tree_index(tmp_path / "ds")
    for split, labels in PRE_SPLIT.items():
        assert stats["splits"][split]["images"] == len(labels)
        table = pd.read_csv(tmp_path / "ds" / f"{split}.csv").set_index("images")
        assert sorted(table.index) == sorted(labels)
        for name, lab in labels.items():
            assert index[name] == ({split}, set(labels_to_codes(lab)))
            np.testing.assert_array_equal(table.loc[name].to_numpy(np.float32), labels_to_vector(lab))
    assert stats["settings"]["layout"] == "pre-split" and stats["settings"]["seed"] is None


def test_pre_split_image_in_two_splits_is_refused(tmp_path):
    write_pre_split(tmp_path / "src", one_hot=False, beside_csv=False)
    jpeg(tmp_path / "src" / "val" / "images" / "t1.jpg")
    pd.DataFrame({"image": ["t1.jpg", "v2.jpg"], "labels": ["scab", "rust"]}).to_csv(
        tmp_path / "src" / "val" / "val_label.csv", index=False)
    with pytest.raises(InputError, match=r"more than one split: t1\.jpg \(train line 2\)"):
        prepare(tmp_path / "src", tmp_path / "ds", size=32, workers=1)
    assert not (tmp_path / "ds").exists()


# ----------------------------------------------------------------------------- bad CSVs: nothing written


def _unknown_label(src):
    kaggle(src, {**GOOD, "a.jpg": "scab blight", "b.jpg": "blight"})


def _no_label(src):
    kaggle(src, {**GOOD, "a.jpg": ""})


def _missing_labels_column(src):
    kaggle(src, GOOD)
    pd.DataFrame({"image": list(GOOD), "label": list(GOOD.values())}).to_csv(src / "train.csv", index=False)


def _missing_image_column(src):
    kaggle(src, GOOD)
    pd.DataFrame({"file": list(GOOD), "labels": list(GOOD.values())}).to_csv(src / "train.csv", index=False)


def _missing_class_column(src):
    kaggle(src, GOOD)
    table = pd.DataFrame({"images": list(GOOD), **{c: 0 for c in CLASSES[1:]}})
    table.to_csv(src / "train.csv", index=False)


def _not_binary(src):
    kaggle(src, GOOD)
    table = pd.DataFrame({"images": list(GOOD), **{c: 1 for c in CLASSES}})
    table.loc[4, "rust"] = 2
    table.to_csv(src / "train.csv", index=False)


def _duplicate(src):
    kaggle(src, GOOD)
    rows = pd.read_csv(src / "train.csv")
    pd.concat([rows, rows.iloc[[1]]]).to_csv(src / "train.csv", index=False)


def _absolute(src):
    kaggle(src, {**GOOD, "/etc/passwd": "scab"}, images=False)


def _dotdot(src):
    kaggle(src, {**GOOD, "../outside.jpg": "scab"}, images=False)


BAD_CSVS = {
    "unknown label": (_unknown_label, r"train\.csv: unknown label 'blight' in lines 8, 9 \(a\.jpg, b\.jpg\)"),
    "no label": (_no_label, r"no label in line 8 \(a\.jpg\)"),
    "missing labels column": (_missing_labels_column, r"needs 'image' and either a 'labels' column"),
    "missing image column": (_missing_image_column, r"no image column"),
    "missing class column": (_missing_class_column, r"one 0/1 column per class"),
    "not 0/1": (_not_binary, r"value other than 0 or 1 in line 6 \(good4\.jpg\)"),
    "duplicate": (_duplicate, r"duplicate image name in lines 3, 8 \(good1\.jpg, good1\.jpg\)"),
    "absolute": (_absolute, r"absolute image name in line 8 \(/etc/passwd\)"),
    "dotdot": (_dotdot, r"image name with '\.\.' in line 8"),
}


@pytest.mark.parametrize("case", list(BAD_CSVS))
def test_bad_csv_is_one_clear_error_before_anything_is_written(tmp_path, case):
    make, message = BAD_CSVS[case]
    make(tmp_path / "src")
    with pytest.raises(InputError, match=message):
        prepare(tmp_path / "src", tmp_path / "ds", size=32, workers=1)
    assert not (tmp_path / "ds").exists()


def test_cli_reports_bad_input_on_one_line_with_exit_2(tmp_path):
    _unknown_label(tmp_path / "src")
    (tmp_path / "ds").mkdir()
    done = run_cli("--src", str(tmp_path / "src"), "--dst", str(tmp_path / "ds"), "--workers", "1")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'src' / 'train.csv'}: unknown label 'blight'")
    assert list((tmp_path / "ds").iterdir()) == []


# ----------------------------------------------------------------------------- bad images: skipped


def _bad_images(src: Path) -> dict[str, str]:
    """Write the bad images next to GOOD; returns image -> expected reason."""
    images = src / "train_images"
    (images / "empty.jpg").write_bytes(b"")
    noise = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(noise).save(images / "whole.jpg", quality=90)
    whole = (images / "whole.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    (images / "garbage.jpg").write_bytes(np.random.default_rng(0).bytes(3000))
    jpeg(images / "bomb.jpg", size=(100, 80))  # 8000 px: over the 5000 px limit of the test (a warning)
    jpeg(images / "bigbomb.jpg", size=(150, 80))  # over twice the limit (an error in Pillow)
    return {"bigbomb.jpg": "over the pixel limit", "missing.jpg": "missing file", "empty.jpg": "empty file",
            "truncated.jpg": "truncated",
            "garbage.jpg": "not an image", "bomb.jpg": "over the pixel limit"}


def test_bad_images_are_skipped_and_reported_and_the_rest_is_done(tmp_path):
    src = kaggle(tmp_path / "src", GOOD)
    bad = _bad_images(src)
    kaggle(src, {**GOOD, **{name: "scab" for name in bad}}, images=False)
    stats = prepare(src, tmp_path / "ds", size=32, workers=2, max_pixels=5000)
    reasons = {item["image"]: item["reason"] for item in stats["skipped"]}
    assert set(reasons) == set(bad)
    for name, reason in bad.items():
        assert reason in reasons[name], (name, reasons[name])
    assert json.loads((tmp_path / "ds" / "stats.json").read_text())["skipped"] == stats["skipped"]
    assert set(tree_index(tmp_path / "ds")) == set(GOOD)
    written = pd.concat([pd.read_csv(tmp_path / "ds" / f"{s}.csv") for s in SPLITS])
    assert sorted(written["images"]) == sorted(GOOD)


def test_other_decode_errors_are_named_by_type_and_first_line():
    assert image_failure(OSError("broken data stream\nmore detail")) == "cannot decode: OSError: broken data stream"
    assert image_failure(ValueError()) == "cannot decode: ValueError"


def test_cli_exits_non_zero_when_no_image_is_usable(tmp_path):
    src = kaggle(tmp_path / "src", {"a.jpg": "scab", "b.jpg": "rust"}, images=False)
    (src / "train_images" / "b.jpg").write_bytes(b"not a jpeg")
    done = run_cli("--src", str(src), "--dst", str(tmp_path / "ds"), "--workers", "1")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: no usable image") and "missing file" in done.stdout
    assert not (tmp_path / "ds" / "stats.json").exists()
    with pytest.raises(NoUsableImages):
        prepare(src, tmp_path / "ds", workers=1)


# ----------------------------------------------------------------------------- image modes


def test_every_mode_comes_out_upright_rgb_and_small_images_are_not_upscaled(tmp_path):
    images = tmp_path / "src" / "train_images"
    images.mkdir(parents=True)
    Image.new("CMYK", (90, 60), (0, 255, 255, 0)).save(images / "cmyk.jpg")  # red
    Image.new("L", (90, 60), 128).save(images / "gray.jpg")
    Image.new("P", (90, 60), 3).save(images / "palette.png")
    Image.new("RGBA", (90, 60), (0, 0, 0, 0)).save(images / "rgba.png")  # fully transparent -> white
    rotated = Image.new("RGB", (80, 40), (0, 0, 255))
    rotated.paste((255, 0, 0), (0, 0, 40, 40))  # stored: red left half, blue right half
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: red on top
    rotated.save(images / "rotated.jpg", exif=exif)
    jpeg(images / "tiny.jpg", size=(40, 30))
    names = ["cmyk.jpg", "gray.jpg", "palette.png", "rgba.png", "rotated.jpg", "tiny.jpg"]
    pd.DataFrame({"image": names, "labels": "scab"}).to_csv(tmp_path / "src" / "train.csv", index=False)
    stats = prepare(tmp_path / "src", tmp_path / "ds", size=32, val=0, test=0, workers=1)
    assert stats["skipped"] == [] and stats["splits"]["train"]["images"] == 6
    out = {p.name: Image.open(p) for p in (tmp_path / "ds" / "train" / "000001").iterdir()}
    assert sorted(out) == sorted(n.rsplit(".", 1)[0] + ".jpg" for n in names)
    assert all(image.mode == "RGB" for image in out.values())
    assert out["cmyk.jpg"].size == (48, 32) and out["cmyk.jpg"].getpixel((24, 16))[0] > 200
    assert len(set(out["gray.jpg"].getpixel((24, 16)))) == 1
    assert min(out["rgba.jpg"].getpixel((24, 16))) > 245
    assert out["rotated.jpg"].size == (32, 64)
    top, bottom = out["rotated.jpg"].getpixel((16, 8)), out["rotated.jpg"].getpixel((16, 56))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60
    assert out["tiny.jpg"].size == (40, 30)
