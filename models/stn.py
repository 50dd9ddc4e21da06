"""Spatial transformer (Jaderberg et al. 2015) in front of any backbone: the ArcPSA report's §5.7.

A small localisation network looks at the photo and predicts a 2 x 3 affine matrix; the photo is
resampled through it (``affine_grid`` + ``grid_sample``) before the backbone sees it, so the network
can learn to zoom into and straighten the leaf. The report's localisation net is kept (conv 3->8 k7,
max-pool, ReLU, conv 8->10 k5, max-pool, ReLU, FC -> 32 -> 6) with adaptive pooling before the FC
in place of its fixed 52 x 52 map, so any input size works. The last layer starts at zero weights and
the identity's bias: at initialisation the warp is the identity and the image passes unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POOLED_SIDE = 4  # the localisation map is pooled to 4 x 4 before the fully connected layers
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class SpatialTransformer(nn.Module):
    """Image (B, 3, H, W) -> the same image warped by a predicted affine transform (B, 3, H, W)."""

    def __init__(self, in_channels: int = 3, hidden: int = 32):
        super().__init__()
        self.localization = nn.Sequential(
            nn.Conv2d(in_channels, 8, kernel_size=7), nn.MaxPool2d(2), nn.ReLU(inplace=True),
            nn.Conv2d(8, 10, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(POOLED_SIDE), nn.Flatten(),
        )
        self.fc_loc = nn.Sequential(nn.Linear(10 * POOLED_SIDE**2, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 6))
        nn.init.zeros_(self.fc_loc[-1].weight)
        with torch.no_grad():
            self.fc_loc[-1].bias.copy_(torch.tensor(IDENTITY))

    def theta(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted affine matrices (B, 2, 3), in the normalised coordinates of ``affine_grid``."""
        return self.fc_loc(self.localization(x)).view(-1, 2, 3)

    def warp(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """``x`` resampled through ``theta`` (bilinear; outside the photo reads zeros)."""
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.warp(x, self.theta(x))
