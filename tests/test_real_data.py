"""process.tree.prepare on real Plant Pathology 2021 leaves (../shared, via PP_REAL_DATA): every label exact."""
import numpy as np
import pandas as pd

from data.dataset import MultiLabelImageFolder
from data.labels import CLASSES, labels_to_vector
from process.tree import SPLITS, prepare


def assert_tree_matches(dst, expected: dict[str, dict[str, np.ndarray]]) -> None:
    """The tree (read by MultiLabelImageFolder) and the split CSVs both equal ``split -> image -> vector``."""
    for split in SPLITS:
        dataset = MultiLabelImageFolder(dst / split)
        names = [p.rsplit("/", 1)[-1] for p, _ in dataset.samples]
        assert sorted(names) == sorted(expected[split]), split
        for name, target in zip(names, dataset.targets):
            np.testing.assert_array_equal(target, expected[split][name], err_msg=f"{split}/{name}")
        table = pd.read_csv(dst / f"{split}.csv")
        assert table["images"].tolist() == names
        np.testing.assert_array_equal(table[list(CLASSES)].to_numpy(np.float32), dataset.targets)


def test_kaggle_sample_is_split_with_every_label_exact(real_data, tmp_path):
    src = real_data / "pp2021-sample"
    source = pd.read_csv(src / "train.csv").set_index("image")["labels"]
    stats = prepare(src, tmp_path / "ds", size=64, workers=2)
    assert stats["skipped"] == [] and stats["total"]["images"] == len(source) == 678
    splits = {split: pd.read_csv(tmp_path / "ds" / f"{split}.csv")["images"] for split in SPLITS}
    expected = {split: {name: labels_to_vector(source[name]) for name in names} for split, names in splits.items()}
    assert sum(len(names) for names in expected.values()) == len(source)
    assert_tree_matches(tmp_path / "ds", expected)
    for split in ("val", "test"):
        assert len(stats["splits"][split]["combinations"]) == 12  # rare combinations reach every split


def test_pre_split_course_dataset_keeps_3000_600_600_with_every_label_exact(real_data, tmp_path):
    src = real_data / "plant_dataset"
    expected = {}
    for split in SPLITS:
        table = pd.read_csv(src / split / f"{split}_label.csv").set_index("images")
        expected[split] = {name: row[list(CLASSES)].to_numpy(np.float32) for name, row in table.iterrows()}
    stats = prepare(src, tmp_path / "ds", size=64, workers=2)
    assert stats["skipped"] == []
    assert [stats["splits"][s]["images"] for s in SPLITS] == [3000, 600, 600]
    assert_tree_matches(tmp_path / "ds", expected)
