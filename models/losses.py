"""Multi-label losses on logits: BCE-with-logits and sigmoid focal loss, with label smoothing."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss


def smooth_targets(targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Binary label smoothing of multi-hot targets: 1 -> 1 - eps/2, 0 -> eps/2."""
    return targets * (1.0 - smoothing) + 0.5 * smoothing if smoothing > 0 else targets


class MultiLabelBCELoss(nn.Module):
    """Mean BCE-with-logits over every (image, class) entry; ``pos_weight`` weighs each class's positives."""

    def __init__(self, smoothing: float = 0.0, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.smoothing = smoothing
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = smooth_targets(targets.to(logits.dtype), self.smoothing)
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)


class MultiLabelFocalLoss(nn.Module):
    """Mean sigmoid focal loss (Lin et al. 2017) over every (image, class) entry.

    Args:
        alpha: Weight of the positive term in (0, 1); negative disables the weighting.
        gamma: Focusing parameter; 0 gives (alpha-weighted) BCE.
        smoothing: Label smoothing of the multi-hot targets.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, smoothing: float = 0.0):
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = smooth_targets(targets.to(logits.dtype), self.smoothing)
        return sigmoid_focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma, reduction="mean")

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, smoothing={self.smoothing}"
