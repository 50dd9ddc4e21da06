"""Augmentation keys (AUG.PRESET, rotation, affine, hue) and the ArcPSA report's recipe config."""
from __future__ import annotations

import colorsys
import random
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform
from torchvision import transforms

from config import get_config, get_default_config
from data.dataset import first_leaf_of_each_class
from data.transforms import TRAIN_CROP_SCALE, build_transform, normalization
from deploy.onnx_export import export_checked
from evaluation.inference import Predictor
from explain.augmentations import augmentation_rows
from helpers import ROOT, cli, load_script, make_tree

main = load_script("main.py")
REPORT_CONFIG = ROOT / "configs" / "arcpsa_swin_base_384_report.yaml"
REPORT_AUG = ["AUG.PRESET", "report", "AUG.ROTATION", "30.0", "AUG.COLOR_JITTER", "0.2", "AUG.HUE", "0.2",
              "AUG.AFFINE_DEGREES", "10.0", "AUG.AFFINE_TRANSLATE", "0.1", "AUG.AFFINE_SCALE", "[0.9, 1.1]",
              "AUG.VFLIP", "0.0", "AUG.REPROB", "0.0", "AUG.AUTO_AUGMENT", "none"]


def config_with(*opts: str):
    config = get_default_config()
    config.merge_from_list(["DATA.IMG_SIZE", "32", *opts])
    return config


def leaf_photo(seed: int = 0) -> Image.Image:
    """A photo with structure everywhere, so that every geometric or colour change shows."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(pixels).resize((48, 40), Image.BICUBIC)


def seeded(transform, image: Image.Image, seed: int) -> torch.Tensor:
    random.seed(seed)
    np.random.seed(seed)  # RandAugment picks its ops with numpy
    torch.manual_seed(seed)
    return transform(image)


def test_default_training_pipeline_is_timms_as_before():
    """The keys' defaults add nothing: the same random draws give the same tensors as timm's own pipeline."""
    config = config_with()
    mean, std, interpolation = normalization(config)
    timm_only = create_transform(32, is_training=True, scale=TRAIN_CROP_SCALE, hflip=0.5, vflip=0.5,
                                 color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25,
                                 re_mode="pixel", re_count=1, interpolation=interpolation, mean=mean, std=std)
    ours = build_transform(True, config)
    assert [type(t) for t in ours.transforms] == [type(t) for t in timm_only.transforms]
    for seed in range(3):
        assert torch.equal(seeded(ours, leaf_photo(), seed), seeded(timm_only, leaf_photo(), seed))


def test_report_preset_is_the_reports_list_in_its_order():
    pipeline = build_transform(True, config_with(*REPORT_AUG)).transforms
    assert [type(t).__name__ for t in pipeline[:5]] == ["Resize", "RandomHorizontalFlip", "RandomRotation",
                                                         "ColorJitter", "RandomAffine"]
    resize, _, rotation, jitter, affine = pipeline[:5]
    assert resize.size == (32, 32) and rotation.degrees == [-30.0, 30.0]
    assert jitter.brightness == jitter.contrast == jitter.saturation == (0.8, 1.2) and jitter.hue == (-0.2, 0.2)
    assert affine.degrees == [-10.0, 10.0] and affine.translate == (0.1, 0.1) and affine.scale == (0.9, 1.1)
    assert not any(isinstance(t, transforms.RandomErasing) for t in pipeline)
    assert build_transform(True, config_with(*REPORT_AUG))(leaf_photo()).shape == (3, 32, 32)


def test_rotation_and_affine_join_the_timm_pipeline_after_the_crop_and_flips():
    pipeline = build_transform(True, config_with("AUG.ROTATION", "15.0", "AUG.AFFINE_TRANSLATE", "0.2")).transforms
    names = [type(t).__name__ for t in pipeline]
    assert names[:5] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandomVerticalFlip",
                         "RandomRotation", "RandomAffine"]
    assert pipeline[4].degrees == [0.0, 0.0] and pipeline[4].translate == (0.2, 0.2)


def test_hue_jitter_turns_a_colour_around_the_wheel():
    """A flat red photo keeps its hue without AUG.HUE and takes other hues with it."""
    red = Image.new("RGB", (40, 40), (200, 40, 40))
    opts = ["AUG.PRESET", "report", "AUG.COLOR_JITTER", "0.0", "AUG.VFLIP", "0.0", "AUG.REPROB", "0.0"]

    def hues(config) -> set[float]:
        mean, std = (np.array(v)[:, None] for v in normalization(config)[:2])
        found = set()
        for seed in range(8):
            pixel = seeded(build_transform(True, config), red, seed)[:, 16:17, 16].numpy() * std + mean
            found.add(round(colorsys.rgb_to_hsv(*np.clip(pixel[:, 0], 0, 1))[0], 2))
        return found

    assert len(hues(config_with(*opts))) == 1
    assert len(hues(config_with(*opts, "AUG.HUE", "0.2"))) >= 4


@pytest.mark.parametrize("key, value, message", [
    ("AUG.PRESET", "fancy", "AUG.PRESET must be one of timm, report, got 'fancy'"),
    ("AUG.AFFINE_SCALE", "[1.1, 0.9]", r"AUG.AFFINE_SCALE must be \[low, high\]"),
    ("AUG.HUE", "0.7", r"AUG.HUE in \[0, 0.5\]"),
])
def test_bad_augmentation_settings_fail_before_any_work(key, value, message):
    with pytest.raises(ValueError, match=message):
        get_config(Namespace(cfg=None, opts=[key, value]))


def test_report_config_states_the_reports_recipe():
    config = get_config(Namespace(cfg=str(REPORT_CONFIG)))
    assert (config.MODEL.TYPE, config.DATA.IMG_SIZE, config.MODEL.HEAD, config.MODEL.PSA.NECK) == (
        "swin_base_patch4_window12_384", 384, "arcface", "report")
    assert (config.TRAIN.OPTIMIZER.NAME, config.TRAIN.LR_SCHEDULER.NAME, config.TRAIN.CLIP_GRAD,
            config.TRAIN.ACCUMULATION_STEPS, config.DATA.BATCH_SIZE, config.TRAIN.EPOCHS,
            config.DATA.OVERSAMPLE.complex, config.TRAIN.PATIENCE) == ("adam", "cosine", 1.0, 2, 16, 8, 6, 10)
    assert config.AUG.PRESET == "report" and config.AUG.ROTATION == 30 and config.AUG.HUE == 0.2
    assert config.TRAIN.BASE_LR == 1e-4  # its appendix's "Learning Rate: 0.0001"


def test_report_config_trains_at_tiny_size_with_plateau_and_exports_with_parity(tmp_path: Path):
    tree = make_tree(tmp_path / "tree", {"train": 12, "val": 6})
    output = tmp_path / "out"
    args = ["--cfg", str(REPORT_CONFIG), *cli(tree, output, "report", "MODEL.TYPE", "swin_tiny_patch4_window7_224",
                                               "TRAIN.EPOCHS", "2", "TRAIN.LR_SCHEDULER.NAME", "plateau")]
    assert main.main(args) == 0
    checkpoint = output / "arcpsa_swin_base_384_report" / "report" / "ckpt_best.pth"
    predictor = Predictor.from_checkpoint(checkpoint, torch.device("cpu"))
    assert predictor.config.AUG.PRESET == "report" and predictor.config.TRAIN.OPTIMIZER.NAME == "adam"
    _, parity = export_checked(predictor.model, predictor.info, checkpoint)
    assert parity <= 1e-4


# ---------------------------------------------------------------------------------------------
# The augmentation preview (scripts/augmentation_sheet.py)
# ---------------------------------------------------------------------------------------------


def test_the_preview_draws_each_leaf_and_the_mixed_batch_the_same_way_for_a_seed(tiny_tree):
    """A row per leaf (the photo, then the draws of the training transform), a row of the batch mixup made of the
    first draws with targets that mix the leaves' labels; the same seed draws the same pixels."""
    config = config_with("AUG.MIXUP", "0.8", "AUG.MIXUP_PROB", "1.0", "AUG.MIXUP_SWITCH_PROB", "0.0")
    leaves = first_leaf_of_each_class(tiny_tree, "train")
    rows, titles = augmentation_rows(config, leaves, draws=3, seed=5)
    assert len(rows) == len(titles) == len(leaves) + 1
    assert all(len(row) == 4 and row[0].title == "photo" for row in rows[:-1])
    assert [t.picture.shape for t in rows[0][1:]] == [(config.DATA.IMG_SIZE, config.DATA.IMG_SIZE, 3)] * 3
    assert titles[0][0].endswith(": complex") and len(rows[-1]) == len(leaves) - len(leaves) % 2
    # mixup pairs image i with image n-1-i: the first leaf's target mixes its label (complex) with the last's (scab)
    mixed = dict(part.split() for part in rows[-1][0].title.split(", "))
    assert set(mixed) == {"complex", "scab"} and sum(map(float, mixed.values())) == pytest.approx(1, abs=0.011)
    again, _ = augmentation_rows(config, leaves, draws=3, seed=5)
    other, _ = augmentation_rows(config, leaves, draws=3, seed=6)
    assert all(np.array_equal(a.picture, b.picture) for a, b in zip(rows[2][1:], again[2][1:]))
    assert not all(np.array_equal(a.picture, b.picture) for a, b in zip(rows[2][1:], other[2][1:]))
    assert len(augmentation_rows(get_default_config(), leaves[:2], draws=1, seed=0)[0]) == 2  # nothing mixed


def test_the_preview_script_writes_its_sheet(tiny_tree, tmp_path):
    output = tmp_path / "aug.png"
    assert load_script("scripts/augmentation_sheet.py").main(["--cfg", str(ROOT / "configs" / "demo_cpu.yaml"),
                                                         "--data-path", str(tiny_tree), "--draws", "2",
                                                         "--output", str(output)]) == 0
    with Image.open(output) as sheet:
        assert sheet.format == "PNG" and sheet.height > sheet.width > 300  # 6 leaves x 3 pictures
