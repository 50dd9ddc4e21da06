"""Multi-label ArcFace head (additive angular margin, Deng et al. 2019) for sigmoid outputs.

Each class has a learnable centre; the logit of class j is ``s * cos(theta_j)``, the scaled
cosine between the embedding and centre j. During training the margin makes the positive
classes harder: ``cos(theta_j + m)`` replaces ``cos(theta_j)`` where label j is present, so
the embedding must come closer than ``m`` radians to every centre of its labels before the
BCE/focal loss is satisfied. Negatives keep ``cos(theta_j)``.

Evaluation and inference never look at labels: the logits are plainly ``s * cos(theta)``.
They are deliberately not shifted by a bias: the decision thresholds tuned on validation play
that role, and a fixed offset would have to be re-derived for every ``s`` and ``m``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# keeps sqrt(1 - cos^2) differentiable at cos = +-1
_EPS = 1e-7


class ArcFaceHead(nn.Module):
    """Cosine classifier with an additive angular margin at positive labels during training.

    Args:
        in_features: Embedding width D.
        num_classes: Number of labels (rows of the centre matrix).
        scale: Logit scale s.
        margin: Angular margin m in radians.
        easy_margin: Apply the margin only where cos(theta) > 0 (no large-angle fallback).
    """

    def __init__(
            self,
            in_features: int,
            num_classes: int,
            scale: float = 30.0,
            margin: float = 0.5,
            easy_margin: bool = False,
    ):
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        self.scale = scale
        self.margin = margin
        self.easy_margin = easy_margin
        # class centres: normalised in forward, so only their direction matters
        self.centers = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.centers)
        # InsightFace's fallback: where theta + m would pass pi (cos(theta) <= cos(pi - m)),
        # cos(theta + m) stops decreasing; cos(theta) - m * sin(m) keeps the logit monotonic.
        self.threshold = math.cos(math.pi - margin)
        self.fallback = math.sin(math.pi - margin) * margin

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        """cos(theta) between each embedding and each centre, shape (B, num_classes)."""
        return F.linear(F.normalize(x, dim=1), F.normalize(self.centers, dim=1)).clamp(-1.0, 1.0)

    def add_margin(self, cosine: torch.Tensor) -> torch.Tensor:
        """cos(theta + m) for every entry, with the easy-margin or large-angle fallback."""
        sine = torch.sqrt((1.0 - cosine * cosine).clamp(min=_EPS))
        phi = cosine * math.cos(self.margin) - sine * math.sin(self.margin)
        if self.easy_margin:
            return torch.where(cosine > 0, phi, cosine)
        return torch.where(cosine > self.threshold, phi, cosine - self.fallback)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, num_classes); ``targets`` (multi-hot) are used only in training mode.

        Soft targets (mixup) blend the two: ``cos + t * (cos(theta + m) - cos)``, which is
        exactly "margin at positives only" for 0/1 targets.
        """
        # float32 even under autocast: bf16 cosines near 1 would make the margin arithmetic coarse
        with torch.autocast(x.device.type, enabled=False):
            cosine = self.cosine(x.float())
            if self.training and targets is not None:
                t = targets.float()
                cosine = cosine + t * (self.add_margin(cosine) - cosine)
            return self.scale * cosine

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, "
                f"scale={self.scale}, margin={self.margin}, easy_margin={self.easy_margin}")
