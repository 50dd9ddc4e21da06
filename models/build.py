"""Builds the multi-label network from the config: timm backbone -> neck -> 6-way head."""
from __future__ import annotations

from typing import Any

import numpy as np
import timm
import torch
from timm.loss import AsymmetricLossMultiLabel
from torch import nn
from yacs.config import CfgNode

from data.labels import NUM_CLASSES
from models.arcface import ArcFaceHead
from models.family import SWIN, VIT, family, family_of, timm_name
from models.losses import MultiLabelBCELoss, MultiLabelFocalLoss
from models.psa import PSANeck, ReportPSANeck
from models.stn import SpatialTransformer
from models.vit import PatchGrid

# (MODEL.SWIN key, timm keyword) pairs; a value of 0 or [] keeps timm's
_SWIN_OVERRIDES = (
    ("PATCH_SIZE", "patch_size"),
    ("EMBED_DIM", "embed_dim"),
    ("DEPTHS", "depths"),
    ("NUM_HEADS", "num_heads"),
    ("WINDOW_SIZE", "window_size"),
    ("MLP_RATIO", "mlp_ratio"),
)


class MultiLabelNet(nn.Module):
    """Backbone -> neck -> dropout -> head, giving one logit per label.

    Without a neck (``nn.Identity``) the backbone pools its own features, as timm models do
    with ``num_classes=0`` (a ViT's class token or average, as it was built); with the PSA neck the
    neck takes the backbone's last feature map (a ViT's patch tokens on their grid, ``to_grid``).

    Args:
        backbone: A timm model created with ``num_classes=0``.
        neck: ``PSANeck`` or ``nn.Identity()``.
        head: ``nn.Linear`` or ``ArcFaceHead``.
        drop_rate: Dropout on the features given to the head.
        freeze_bn: Keep the backbone's BatchNorm layers in eval mode when training (fixed statistics).
        stn: A ``SpatialTransformer`` warping the image before the backbone, or None.
        to_grid: For token backbones (ViT family), the ``PatchGrid`` laying their tokens out as the map
            the neck takes; None for backbones that give maps.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, drop_rate: float = 0.0,
                 freeze_bn: bool = False, stn: nn.Module | None = None, to_grid: nn.Module | None = None):
        super().__init__()
        self.stn = stn
        self.backbone = backbone
        self.to_grid = to_grid
        self.neck = neck
        self.head_drop = nn.Dropout(drop_rate)
        self.head = head
        self.freeze_bn = freeze_bn
        self.backbone_frozen = False

    def freeze_backbone(self, frozen: bool) -> None:
        """Fix the backbone (no gradients, eval mode: BatchNorm statistics and dropouts off) or release it.

        Frozen parameters get no gradient, so the optimizer skips them (weight decay included).
        """
        self.backbone_frozen = frozen
        self.backbone.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> "MultiLabelNet":
        """``nn.Module.train``, except that a frozen backbone (or, with ``freeze_bn``, its BatchNorms) stays in eval."""
        super().train(mode)
        if mode and self.backbone_frozen:
            self.backbone.eval()
        elif mode and self.freeze_bn:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding the head classifies, shape (B, D)."""
        if self.stn is not None:
            x = self.stn(x)
        x = self.backbone.forward_features(x)
        if isinstance(self.neck, nn.Identity):
            return self.backbone.forward_head(x, pre_logits=True)
        if self.to_grid is not None:
            x = self.to_grid(x)
        return self.neck(x)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, 6). ``targets`` only reach an ArcFace head, which uses them in training only."""
        x = self.head_drop(self.features(x))
        if isinstance(self.head, ArcFaceHead):
            return self.head(x, targets)
        return self.head(x)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Backbone's no-decay parameters, plus the ArcFace centres (only their direction is used)."""
        names = {f"backbone.{n}" for n in getattr(self.backbone, "no_weight_decay", set)()}
        if isinstance(self.head, ArcFaceHead):
            names.add("head.centers")
        return names

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        return set(getattr(self.backbone, "no_weight_decay_keywords", set)())

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)


def backbone_kwargs(config: CfgNode) -> dict[str, Any]:
    """Keyword arguments for ``timm.create_model``: only those the model type accepts."""
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    swin = {kw: config.MODEL.SWIN[key] for key, kw in _SWIN_OVERRIDES if config.MODEL.SWIN[key]}
    kind = family(config.MODEL.TYPE)
    if kind == SWIN:
        # Swin's own default drop_path_rate is 0.1: pass ours even when it is 0
        kwargs.update(drop_path_rate=config.MODEL.DROP_PATH_RATE, img_size=config.DATA.IMG_SIZE)
        kwargs.update({kw: tuple(v) if isinstance(v, list) else v for kw, v in swin.items()})
        return kwargs
    if kind == VIT:
        # position embeddings are sized to the input: timm resamples a pretrained file's to it
        kwargs["img_size"] = config.DATA.IMG_SIZE
    if swin:
        raise ValueError(f"MODEL.SWIN.* overrides {sorted(swin)} only apply to Swin models, "
                         f"not MODEL.TYPE {config.MODEL.TYPE!r}")
    if config.MODEL.DROP_PATH_RATE > 0:
        kwargs["drop_path_rate"] = config.MODEL.DROP_PATH_RATE
    return kwargs


def build_backbone(config: CfgNode) -> nn.Module:
    """The timm model named by MODEL.TYPE, headless, without downloaded weights."""
    name = timm_name(config.MODEL.TYPE)
    if not timm.is_model(name):
        raise ValueError(f"MODEL.TYPE {config.MODEL.TYPE!r} is not a timm model name "
                         "(see timm.list_models())")
    backbone = timm.create_model(name, **backbone_kwargs(config))
    if config.TRAIN.USE_CHECKPOINT:
        backbone.set_grad_checkpointing(True)
    return backbone


def build_model(config: CfgNode) -> MultiLabelNet:
    """A spatial transformer when MODEL.STN, the backbone, the PSA neck when MODEL.PSA.ENABLE (on the patch grid
    of a ViT-family backbone), then a linear or ArcFace head (the config's values were checked by config.py)."""
    backbone = build_backbone(config)
    width = backbone.num_features
    neck: nn.Module = nn.Identity()
    to_grid = PatchGrid.of(backbone) if family_of(backbone) == VIT else None
    if config.MODEL.PSA.ENABLE:
        width = config.MODEL.PSA.OUT_DIM
        fmt = "NCHW" if to_grid is not None else getattr(backbone, "output_fmt", "NCHW")
        if config.MODEL.PSA.NECK == "report":
            neck = ReportPSANeck(backbone.num_features, width, config.MODEL.PSA.HIDDEN_DIM, fmt)
        else:
            neck = PSANeck(backbone.num_features, width, fmt)
    if config.MODEL.HEAD == "arcface":
        arc = config.MODEL.ARCFACE
        head: nn.Module = ArcFaceHead(width, NUM_CLASSES, arc.SCALE, arc.MARGIN, arc.EASY_MARGIN)
    else:
        head = nn.Linear(width, NUM_CLASSES)
    stn = SpatialTransformer() if config.MODEL.STN else None
    return MultiLabelNet(backbone, neck, head, config.MODEL.DROP_RATE, config.MODEL.FREEZE_BN, stn, to_grid)


def build_loss(config: CfgNode) -> nn.Module:
    """The training loss on logits and multi-hot targets (LOSS.NAME, LOSS.POS_WEIGHT)."""
    smoothing = config.MODEL.LABEL_SMOOTHING
    pos_weight = torch.tensor(list(config.LOSS.POS_WEIGHT), dtype=torch.float32) if config.LOSS.POS_WEIGHT else None
    if config.LOSS.NAME == "bce":
        return MultiLabelBCELoss(smoothing, pos_weight)
    if config.LOSS.NAME == "focal":
        return MultiLabelFocalLoss(config.LOSS.FOCAL_ALPHA, config.LOSS.FOCAL_GAMMA, smoothing)
    return AsymmetricLossMultiLabel(gamma_neg=config.LOSS.ASL_GAMMA_NEG, gamma_pos=config.LOSS.ASL_GAMMA_POS,
                                    clip=config.LOSS.ASL_CLIP, smoothing=smoothing, reduction="batchmean",
                                    pos_weight=pos_weight)


def counted_pos_weight(targets: np.ndarray, power: float) -> list[float]:
    """(negatives / positives) ** power of each class of the training targets (1 for a class without both)."""
    positives = np.asarray(targets).sum(axis=0)
    negatives = len(targets) - positives
    ratio = np.where((positives > 0) & (negatives > 0), negatives / np.maximum(positives, 1), 1.0)
    return [round(float(v), 4) for v in ratio ** power]
