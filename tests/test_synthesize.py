"""process/synthesize.py and process/leaves.py: Kaggle layout, real label frequencies, determinism, visible symptoms."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data.labels import parse_labels
from process.leaves import render_leaf
from process.synthesize import COMBINATION_COUNTS, allocate_counts, main, synthesize
from utils.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = (64, 48)
SMALL = (160, 120)


@pytest.fixture(scope="module")
def dataset300(tmp_path_factory) -> Path:
    """300 tiny images: enough for every label combination to appear."""
    out = tmp_path_factory.mktemp("raw300")
    synthesize(out, 300, seed=3, size=TINY)
    return out


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_other_seed_other_images(tmp_path):
    synthesize(tmp_path / "a", 12, seed=5, size=SMALL)
    synthesize(tmp_path / "b", 12, seed=5, size=SMALL)
    synthesize(tmp_path / "c", 12, seed=6, size=SMALL)
    a, b, c = (_files(tmp_path / x) for x in "abc")
    assert len(a) == 13 and a == b
    images_a = {v for k, v in a.items() if k.endswith(".jpg")}
    images_c = {v for k, v in c.items() if k.endswith(".jpg")}
    assert not images_a & images_c


def test_all_combinations_at_real_frequencies(dataset300):
    counts = pd.read_csv(dataset300 / "train.csv")["labels"].value_counts()
    assert set(counts.index) == set(COMBINATION_COUNTS)
    total = sum(COMBINATION_COUNTS.values())
    for combo, real in COMBINATION_COUNTS.items():
        assert abs(counts[combo] - 300 * real / total) <= 1.5, combo


@pytest.mark.parametrize("num", [1, 5, 12, 37, 300, 1000, 18632])
def test_allocation_sums_to_num_and_keeps_every_combination(num):
    counts = allocate_counts(num)
    assert sum(counts.values()) == num
    if num >= len(COMBINATION_COUNTS):
        assert min(counts.values()) >= 1
    if num == sum(COMBINATION_COUNTS.values()):
        assert counts == COMBINATION_COUNTS


def test_csv_is_kaggle_format(dataset300):
    csv = dataset300 / "train.csv"
    assert csv.read_text().splitlines()[0] == "image,labels"
    frame = pd.read_csv(csv)
    assert list(frame.columns) == ["image", "labels"] and len(frame) == 300
    assert frame["image"].is_unique
    assert all(re.fullmatch(r"[0-9a-f]{16}\.jpg", name) for name in frame["image"])
    for labels in frame["labels"]:
        names = parse_labels(labels)
        assert "healthy" not in names or names == ["healthy"]
    on_disk = {p.name for p in (dataset300 / "train_images").iterdir()}
    assert on_disk == set(frame["image"])  # no leftover temp files, nothing missing


def test_images_are_rgb_jpegs_of_the_requested_size(tmp_path):
    frame = synthesize(tmp_path, 4, seed=0, size=SMALL, quality=80)
    assert list(frame.columns) == ["image", "labels"] and len(frame) == 4
    for name in frame["image"]:
        with Image.open(tmp_path / "train_images" / name) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", SMALL)
            image.load()


def _changed_colours(labels: str, seed: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Where a diseased photo differs from its healthy twin (same generator state): the changed
    fraction, and the mean RGB of those pixels in the diseased and in the healthy photo."""
    sick = render_leaf(labels, np.random.default_rng([seed, 0]), SMALL).astype(int)
    well = render_leaf("healthy", np.random.default_rng([seed, 0]), SMALL).astype(int)
    changed = np.abs(sick - well).max(axis=2) > 40
    return changed.mean(), sick[changed].mean(axis=0), well[changed].mean(axis=0)


def _saturation(rgb: np.ndarray) -> float:
    return float(rgb.max() - rgb.min())


# How each symptom shifts the colour of the pixels it covers, against the green of its healthy twin.
SYMPTOM_COLOURS = {
    "rust": lambda sick, well: sick[0] > sick[1] > sick[2] and sick[0] - sick[2] > 80,  # orange
    "frog_eye_leaf_spot": lambda sick, well: sick[0] > sick[1] and well[1] > well[0],  # tan / purple
    "scab": lambda sick, well: sick.sum() < well.sum() - 60  # dark olive
    and sick[1] - sick[0] < well[1] - well[0] - 30 and sick[2] < 0.6 * sick[1],
    "powdery_mildew": lambda sick, well: _saturation(sick) < _saturation(well) - 15  # whitish
    and sick[2] > well[2] + 10,
    "complex": lambda sick, well: sick[0] >= sick[1] > 1.5 * sick[2] and well[1] > well[0],  # brown
}


@pytest.mark.parametrize("label", sorted(SYMPTOM_COLOURS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_symptoms_are_drawn_in_their_colours(label, seed):
    fraction, sick, well = _changed_colours(label, seed)
    assert fraction > 0.005, f"{label}: almost nothing drawn"
    assert SYMPTOM_COLOURS[label](sick, well), f"{label}: changed pixels {sick} (healthy twin {well})"


def _fraction(rgb: np.ndarray, test) -> float:
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return float(test(r, g, b).mean())


def test_multi_label_image_carries_each_labels_symptoms():
    def purple(r, g, b):
        return (r > g + 15) & (b > g + 5)

    def orange(r, g, b):
        return (r > 140) & (r - b > 100) & (r > g + 20)

    def mean_fractions(labels: str) -> tuple[float, float]:
        images = [render_leaf(labels, np.random.default_rng([seed, 1]), (320, 240)) for seed in range(4)]
        return np.mean([_fraction(a, purple) for a in images]), np.mean([_fraction(a, orange) for a in images])

    healthy_purple, healthy_orange = mean_fractions("healthy")
    both_purple, both_orange = mean_fractions("rust frog_eye_leaf_spot")
    assert both_purple > 10 * healthy_purple + 5e-4
    assert both_orange > 10 * healthy_orange + 2e-3


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "raw"
    cmd = [sys.executable, "process/synthesize.py", "--out", str(out), "--num", "6", "--seed", "1",
           "--size", "96x64", "--quality", "85"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "total" in result.stdout
    frame = pd.read_csv(out / "train.csv")
    assert len(frame) == 6
    assert frame.equals(synthesize(tmp_path / "api", 6, seed=1, size=(96, 64), quality=85))


@pytest.mark.parametrize("args, message", [
    (["--num", "0"], "num must be >= 1"),
    (["--size", "600"], "WIDTHxHEIGHT"),
    (["--size", "10x10"], "each side in"),
    (["--quality", "101"], "quality must be in 1..100"),
    (["--seed", "-1"], "seed must be >= 0"),
])
def test_cli_rejects_bad_arguments(tmp_path, capsys, args, message):
    base = {"--out": str(tmp_path / "raw"), "--num": "2", "--seed": "0"}
    base.update(zip(args[::2], args[1::2]))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main([x for kv in base.items() for x in kv]))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "raw").exists()


def test_api_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num must be >= 1"):
        synthesize(tmp_path, 0)
    with pytest.raises(ValueError, match="quality"):
        synthesize(tmp_path, 1, quality=0)
