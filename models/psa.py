"""Polarized self-attention (sequential layout) and the feature neck built on it.

Liu et al. 2021, "Polarized Self-Attention: Towards High-quality Pixel-wise Regression"
(arXiv:2107.00782). The channel-only branch re-weights channels, then the spatial-only branch
re-weights positions of the re-weighted map; each keeps half the channels inside ("polarized")
and uses a softmax over the dimension it collapses.
"""
from __future__ import annotations

import torch
from torch import nn


class PolarizedSelfAttention(nn.Module):
    """Sequential PSA on an NCHW map: ``x * A_ch(x)``, then ``y * A_sp(y)``.

    Args:
        channels: Number of input (and output) channels C.
    """

    def __init__(self, channels: int):
        super().__init__()
        if channels < 2:
            raise ValueError(f"PSA needs at least 2 channels, got {channels}")
        inner = channels // 2
        # channel-only branch: Wq (C -> 1), Wv (C -> C/2), Wz (C/2 -> C) + LayerNorm
        self.ch_wq = nn.Conv2d(channels, 1, kernel_size=1)
        self.ch_wv = nn.Conv2d(channels, inner, kernel_size=1)
        self.ch_wz = nn.Linear(inner, channels)
        self.ch_norm = nn.LayerNorm(channels)
        # spatial-only branch: Wq, Wv (C -> C/2)
        self.sp_wq = nn.Conv2d(channels, inner, kernel_size=1)
        self.sp_wv = nn.Conv2d(channels, inner, kernel_size=1)

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """A_ch in (0, 1), shape (B, C, 1, 1): values pooled with a softmax over the HW positions."""
        b, c = x.shape[:2]
        query = self.ch_wq(x).flatten(2).softmax(dim=-1)  # (B, 1, HW)
        value = self.ch_wv(x).flatten(2)  # (B, C/2, HW)
        pooled = (value @ query.transpose(1, 2)).squeeze(-1)  # (B, C/2)
        return torch.sigmoid(self.ch_norm(self.ch_wz(pooled))).view(b, c, 1, 1)

    def spatial_weights(self, x: torch.Tensor) -> torch.Tensor:
        """A_sp in (0, 1), shape (B, 1, H, W): a globally pooled query, softmax over channels."""
        b, _, h, w = x.shape
        query = self.sp_wq(x).mean(dim=(2, 3)).softmax(dim=-1).unsqueeze(1)  # (B, 1, C/2)
        value = self.sp_wv(x).flatten(2)  # (B, C/2, HW)
        return torch.sigmoid(query @ value).view(b, 1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel_weights(x)
        return x * self.spatial_weights(x)


class PSANeck(nn.Module):
    """Backbone feature map -> PSA -> global average pooling -> embedding of ``out_features``.

    The projection ends with a LayerNorm rather than a BatchNorm1d so that batches of one
    (inference, the last batch of an epoch, tiny per-GPU batches) behave like any other.

    Args:
        in_features: Channels of the backbone's last feature map (``backbone.num_features``).
        out_features: Width of the embedding given to the head.
        input_fmt: 'NCHW' (CNNs) or 'NHWC' (timm's Swin token map, ``backbone.output_fmt``).
    """

    def __init__(self, in_features: int, out_features: int, input_fmt: str = "NCHW"):
        super().__init__()
        if input_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"PSA needs an NCHW or NHWC feature map, the backbone gives {input_fmt}")
        self.input_fmt = input_fmt
        self.psa = PolarizedSelfAttention(in_features)
        self.proj = nn.Linear(in_features, out_features)
        self.norm = nn.LayerNorm(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(
                f"PSA needs a 4-D feature map, the backbone gave shape {tuple(x.shape)} "
                "(token sequences other than timm's ViT, DeiT and EVA, which are laid on their patch grid, "
                "are not supported with MODEL.PSA.ENABLE)"
            )
        if self.input_fmt == "NHWC":
            x = x.permute(0, 3, 1, 2)
        x = self.psa(x).mean(dim=(2, 3))
        return self.norm(self.proj(x))


class ReportPSANeck(nn.Module):
    """The ArcPSA report's ``PSANFeatureModule``: its layers, widths and initialisation, on any backbone width.

    1x1 conv + BatchNorm + PReLU -> PSA -> 1x1 conv + BatchNorm + PReLU -> global average pooling ->
    Linear(C, hidden) + BatchNorm1d + PReLU -> Linear(hidden, out) + BatchNorm1d + PReLU. Convolutions get
    Kaiming-normal weights, linears N(0, 0.01), biases zero (the report's init). The report hard-codes
    C = 1024 (Swin-B); here C is the backbone's ``num_features``. Its BatchNorm1d layers need training
    batches of two or more (the training loader drops a last batch of one).

    Args:
        in_features: Channels of the backbone's last feature map.
        out_features: Width of the embedding (the report's 512, ``MODEL.PSA.OUT_DIM``).
        hidden: Width of the first linear layer (the report's 768, ``MODEL.PSA.HIDDEN_DIM``).
        input_fmt: 'NCHW' or 'NHWC', as for :class:`PSANeck`.
    """

    def __init__(self, in_features: int, out_features: int = 512, hidden: int = 768, input_fmt: str = "NCHW"):
        super().__init__()
        if input_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"PSA needs an NCHW or NHWC feature map, the backbone gives {input_fmt}")
        self.input_fmt = input_fmt
        self.conv_in = nn.Sequential(nn.Conv2d(in_features, in_features, 1), nn.BatchNorm2d(in_features), nn.PReLU())
        self.psa = PolarizedSelfAttention(in_features)
        self.conv_out = nn.Sequential(nn.Conv2d(in_features, in_features, 1), nn.BatchNorm2d(in_features), nn.PReLU())
        self.embed = nn.Sequential(
            nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.PReLU(),
            nn.Linear(hidden, out_features), nn.BatchNorm1d(out_features), nn.PReLU(),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in (*self.conv_in, *self.conv_out, *self.embed):
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"PSA needs a 4-D feature map, the backbone gave shape {tuple(x.shape)}")
        if self.input_fmt == "NHWC":
            x = x.permute(0, 3, 1, 2)
        x = self.conv_out(self.psa(self.conv_in(x))).mean(dim=(2, 3))
        return self.embed(x)
