"""ViT-family backbones (timm ViT, DeiT, EVA-02): their token sequences as the patch grids the rest expects.

A timm ViT's ``forward_features`` gives (B, N, C) tokens: ``num_prefix_tokens`` leading ones (the
class token, DeiT's distillation token, register tokens) and then the patches in row-major order.
The PSA neck and Grad-CAM need a (B, C, H, W) map, so the prefix tokens are dropped and the patch
tokens laid back on the patch grid; the plain linear head keeps timm's own pooling
(``forward_head``: class token, average or attention pooling, as the model was built).
"""
from __future__ import annotations

import torch
from torch import nn


class PatchGrid(nn.Module):
    """Tokens (B, N, C) -> patch map (B, C, H, W), the ``num_prefix_tokens`` leading tokens dropped.

    Args:
        grid_size: (H, W) of the patch grid at the model's input size (``patch_embed.grid_size``).
        num_prefix_tokens: Class, distillation and register tokens ahead of the patches.
    """

    def __init__(self, grid_size: tuple[int, int], num_prefix_tokens: int):
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.num_prefix_tokens = num_prefix_tokens

    @classmethod
    def of(cls, backbone: nn.Module) -> "PatchGrid":
        """The grid of a built ViT-family backbone."""
        return cls(backbone.patch_embed.grid_size, backbone.num_prefix_tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        height, width = self.grid_size
        if tokens.ndim != 3 or tokens.shape[1] != self.num_prefix_tokens + height * width:
            raise ValueError(f"expected (B, {self.num_prefix_tokens} + {height} x {width}, C) tokens, "
                             f"got shape {tuple(tokens.shape)}")
        patches = tokens[:, self.num_prefix_tokens:]
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, num_prefix_tokens={self.num_prefix_tokens}"
