"""ViT-family backbones (timm ViT, DeiT, EVA-02): their token sequences as the patch grids the rest expects.

A timm ViT's ``forward_features`` gives (B, N, C) tokens: ``num_prefix_tokens`` leading ones (the
class token, DeiT's distillation token, register tokens) and then the patches in row-major order.
The PSA neck and Grad-CAM need a (B, C, H, W) map, so the prefix tokens are dropped and the patch
tokens laid back on the patch grid; the plain linear head keeps timm's own pooling
(``forward_head``: class token, average or attention pooling, as the model was built).
"""
from __future__ import annotations

import timm
import torch
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from torch import nn

# timm modules whose models are ViT-family token transformers (vit_*, deit_*, eva02_*, test_vit*)
VIT_MODULES = ("timm.models.vision_transformer", "timm.models.deit", "timm.models.eva")
VIT_CLASSES = (VisionTransformer, Eva)


def is_vit(model_type: str) -> bool:
    """True when the timm model named ``model_type`` is a ViT-family token transformer."""
    return timm.is_model(model_type) and timm.models.model_entrypoint(model_type).__module__ in VIT_MODULES


def is_vit_backbone(backbone: nn.Module) -> bool:
    """True for a built timm ViT, DeiT or EVA model (their blocks give token sequences)."""
    return isinstance(backbone, VIT_CLASSES)


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
