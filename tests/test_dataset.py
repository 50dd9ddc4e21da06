"""data/dataset.py: MultiLabelImageFolder rebuilds each image's labels from the tree alone."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.transforms import ToTensor

from data.dataset import MultiLabelImageFolder
from data.labels import CLASSES
from process.synthesize import synthesize
from process.tree import SPLITS, prepare


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    synthesize(raw, 60, seed=2, size=(96, 64))
    dst = tmp_path_factory.mktemp("ds") / "ds"
    prepare(raw, dst, size=32, workers=2)
    return dst


@pytest.mark.parametrize("split", SPLITS)
def test_targets_equal_the_split_csv_row_by_row(prepared, split):
    dataset = MultiLabelImageFolder(prepared / split)
    table = pd.read_csv(prepared / f"{split}.csv")
    assert list(CLASSES) == list(table.columns[1:])
    assert [p.rsplit("/", 1)[-1] for p, _ in dataset.samples] == list(table["images"])
    np.testing.assert_array_equal(dataset.targets, table[list(CLASSES)].to_numpy(np.float32))
    assert dataset.targets.dtype == np.float32 and len(dataset) == len(table)


def test_getitem_returns_transformed_rgb_image_and_float_target(prepared):
    dataset = MultiLabelImageFolder(prepared / "train", transform=ToTensor())
    multi = int(np.argmax(dataset.targets.sum(axis=1)))
    image, target = dataset[multi]
    assert image.shape == (3, 32, 48)
    assert target.dtype == torch.float32 and target.sum() >= 2
    torch.testing.assert_close(target, torch.from_numpy(dataset.targets[multi]))
    plain, _ = MultiLabelImageFolder(prepared / "train")[0]
    assert isinstance(plain, Image.Image) and plain.mode == "RGB"


def _tree(root, files):
    for relative in files:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), 90).save(path)


def test_a_file_in_several_folders_gets_the_or_of_their_codes_and_temp_files_are_ignored(tmp_path):
    _tree(tmp_path, ["000001/b.jpg", "010000/b.jpg", "100000/b.jpg", "001000/a.jpg"])
    (tmp_path / "001000" / ".a.jpg.tmp").write_bytes(b"half")
    dataset = MultiLabelImageFolder(tmp_path)
    assert [p.rsplit("/", 1)[-1] for p, _ in dataset.samples] == ["a.jpg", "b.jpg"]
    np.testing.assert_array_equal(dataset.targets, [[0, 0, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1]])


@pytest.mark.parametrize("folder", ["scab", "000000", "10000", "000002"])
def test_a_folder_that_is_not_a_class_code_is_an_error_naming_it(tmp_path, folder):
    _tree(tmp_path, ["000001/a.jpg", f"{folder}/b.jpg"])
    with pytest.raises(ValueError, match=f"{folder}: folder name is not a class code"):
        MultiLabelImageFolder(tmp_path)


def test_empty_or_missing_root_is_a_clear_error(tmp_path):
    (tmp_path / "000001").mkdir()
    with pytest.raises(ValueError, match="no images"):
        MultiLabelImageFolder(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such split folder"):
        MultiLabelImageFolder(tmp_path / "absent")
