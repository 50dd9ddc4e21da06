"""The one image transform factory (timm's), for training, validation and inference.

Normalisation belongs to the backbone's weights, not to the code: timm's ``tf_efficientnet_lite*``
were trained on inputs scaled to [-1, 1] (mean = std = 0.5), Swin on ImageNet's statistics.
:func:`normalization` resolves them from the timm model's ``pretrained_cfg`` (``DATA.MEAN``,
``DATA.STD`` and ``DATA.INTERPOLATION`` override it); ``main.py`` writes the result into the run's
config (:func:`resolve_normalization`), so ``config.yaml`` and every checkpoint carry the values the
model was trained with.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform, resolve_data_config
from timm.data import auto_augment as timm_auto_augment
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from yacs.config import CfgNode

# Crops keep at least half the leaf: a lesion cut out of the crop would make its label wrong.
TRAIN_CROP_SCALE = (0.5, 1.0)
# TEST.CROP: resize the shorter side to IMG_SIZE / 0.875, then centre-crop (upstream Swin).
TEST_CROP_PCT = 0.875
# What a model type without a timm pretrained config gets (upstream's 'swin' alias is Swin-T: ImageNet's)
FALLBACK_INTERPOLATION = "bicubic"


def backbone_normalization(model_type: str) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, interpolation) the timm model ``model_type`` was pretrained with, from its ``pretrained_cfg``."""
    pretrained_cfg = timm.models.get_pretrained_cfg(model_type) if timm.is_model(model_type) else None
    if pretrained_cfg is None:
        return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, FALLBACK_INTERPOLATION
    data = resolve_data_config(pretrained_cfg=pretrained_cfg.to_dict())
    return tuple(data["mean"]), tuple(data["std"]), data["interpolation"]


def normalization(config: CfgNode) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, interpolation) of every transform: DATA.MEAN/STD/INTERPOLATION, each empty one from the backbone."""
    mean, std, interpolation = backbone_normalization(config.MODEL.TYPE)
    data = config.DATA
    return (tuple(data.MEAN) if data.MEAN else mean, tuple(data.STD) if data.STD else std,
            data.INTERPOLATION or interpolation)


def resolve_normalization(config: CfgNode) -> CfgNode:
    """A frozen copy of ``config`` with DATA.MEAN, DATA.STD and DATA.INTERPOLATION filled in (empty keys:
    the backbone's), the values a run records."""
    mean, std, interpolation = normalization(config)
    resolved = config.clone()
    resolved.defrost()
    resolved.DATA.MEAN, resolved.DATA.STD = [float(v) for v in mean], [float(v) for v in std]
    resolved.DATA.INTERPOLATION = interpolation
    resolved.freeze()
    return resolved


@dataclass(frozen=True)
class EvalPreprocessing:
    """Everything the evaluation transform depends on, so an exported model can carry it without a config."""

    img_size: int
    crop: bool  # TEST.CROP: resize to img_size / TEST_CROP_PCT, then centre-crop
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_config(cls, config: CfgNode) -> "EvalPreprocessing":
        mean, std, interpolation = normalization(config)
        return cls(config.DATA.IMG_SIZE, bool(config.TEST.CROP), interpolation, tuple(mean), tuple(std))

    def transform(self) -> Callable:
        """PIL image -> normalised tensor: resize to ``img_size`` square (or resize + centre crop)."""
        return create_transform(
            self.img_size,
            is_training=False,
            crop_pct=TEST_CROP_PCT if self.crop else 1.0,
            crop_mode="center" if self.crop else "squash",
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
        )

    @property
    def decode_size(self) -> int:
        """The smallest side the transform needs before its own resize (for JPEG draft decoding)."""
        return int(math.ceil(self.img_size / TEST_CROP_PCT)) if self.crop else self.img_size


def build_transform(is_train: bool, config: CfgNode) -> Callable:
    """PIL image -> normalised tensor of ``DATA.IMG_SIZE`` pixels.

    Training, ``AUG.PRESET`` 'timm': random resized crop, flips (``AUG.HFLIP``, ``AUG.VFLIP``), rotation and
    affine (``AUG.ROTATION``, ``AUG.AFFINE_*``), RandAugment (``AUG.AUTO_AUGMENT``) or colour jitter
    (``AUG.COLOR_JITTER``, ``AUG.HUE``), random erasing; 'report': :func:`report_pipeline`. Evaluation:
    resize to ``IMG_SIZE x IMG_SIZE`` (or resize + centre crop with ``TEST.CROP``), see
    :class:`EvalPreprocessing`. All normalise with :func:`normalization`.
    """
    if not is_train:
        return EvalPreprocessing.from_config(config).transform()
    mean, std, interpolation = normalization(config)
    aug = config.AUG
    auto_augment = aug.AUTO_AUGMENT if aug.AUTO_AUGMENT and aug.AUTO_AUGMENT.lower() != "none" else None
    report = aug.PRESET == "report"
    primary, secondary, final = create_transform(
        config.DATA.IMG_SIZE,
        is_training=True,
        scale=TRAIN_CROP_SCALE,
        hflip=aug.HFLIP,
        vflip=aug.VFLIP,
        color_jitter=colour_jitter(aug),
        auto_augment=None if report else auto_augment,
        re_prob=aug.REPROB,
        re_mode=aug.REMODE,
        re_count=aug.RECOUNT,
        interpolation=interpolation,
        mean=mean,
        std=std,
        separate=True,
    )
    if report:
        return report_pipeline(config, interpolation, final)
    return _keep_a_posterize_bit(transforms.Compose([*primary.transforms, *rotation(aug), *affine(aug),
                                                     *secondary.transforms, *final.transforms]))


def unnormalised(tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> Image.Image:
    """A normalised (3, H, W) tensor back to an RGB image (the transform's normalisation undone)."""
    pixels = tensor.detach().float().cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return Image.fromarray((pixels.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def colour_jitter(aug: CfgNode) -> float | tuple[float, ...] | None:
    """timm's colour-jitter argument: brightness, contrast and saturation ``AUG.COLOR_JITTER``, hue ``AUG.HUE``."""
    if aug.COLOR_JITTER <= 0 and aug.HUE <= 0:
        return None
    strength = max(float(aug.COLOR_JITTER), 0.0)
    return (strength, strength, strength, float(aug.HUE)) if aug.HUE > 0 else strength


def rotation(aug: CfgNode) -> list[Callable]:
    """``AUG.ROTATION``: a random rotation, or nothing at 0."""
    if aug.ROTATION <= 0:
        return []
    return [transforms.RandomRotation(float(aug.ROTATION), interpolation=InterpolationMode.BILINEAR)]


def affine(aug: CfgNode) -> list[Callable]:
    """``AUG.AFFINE_*``: a random affine warp, or nothing at its neutral setting (0, 0, [1, 1])."""
    translate, scale = float(aug.AFFINE_TRANSLATE), tuple(float(v) for v in aug.AFFINE_SCALE)
    if aug.AFFINE_DEGREES <= 0 and translate <= 0 and scale == (1.0, 1.0):
        return []
    return [transforms.RandomAffine(float(aug.AFFINE_DEGREES), translate=(translate, translate) if translate else None,
                                    scale=scale, interpolation=InterpolationMode.BILINEAR)]


def report_pipeline(config: CfgNode, interpolation: str, final: Callable) -> Callable:
    """The ArcPSA report's training list, in its order: resize (no crop: every lesion stays in view), flips,
    rotation, colour jitter, affine; then timm's tensor, normalisation and (REPROB > 0) random erasing."""
    aug, size = config.AUG, config.DATA.IMG_SIZE
    steps: list[Callable] = [transforms.Resize((size, size), interpolation=InterpolationMode(interpolation))]
    if aug.HFLIP > 0:
        steps.append(transforms.RandomHorizontalFlip(aug.HFLIP))
    if aug.VFLIP > 0:
        steps.append(transforms.RandomVerticalFlip(aug.VFLIP))
    steps += rotation(aug)
    jitter = colour_jitter(aug)
    if jitter is not None:
        steps.append(transforms.ColorJitter(*((jitter,) * 3 if isinstance(jitter, float) else jitter)))
    steps += affine(aug)
    return transforms.Compose([*steps, *final.transforms])


def _posterize_at_least_one_bit(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's posterize with 0 bits raised to 1: Pillow >= 13 rejects 0, which RandAugment's
    increasing posterize reaches at magnitude 10 (m9 + mstd0.5), so training would crash at random."""
    return timm_auto_augment.posterize(img, max(1, bits_to_keep), **kwargs)


def _keep_a_posterize_bit(transform: Any) -> Any:
    """Swap the posterize of this transform's RandAugment/AutoAugment/AugMix ops for the safe one."""
    for step in getattr(transform, "transforms", ()):
        ops = list(getattr(step, "ops", ())) + [op for sub in getattr(step, "policy", ()) for op in sub]
        for op in ops:
            if getattr(op, "aug_fn", None) is timm_auto_augment.posterize:
                op.aug_fn = _posterize_at_least_one_bit
    return transform
