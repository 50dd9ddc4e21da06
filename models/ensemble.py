"""Several trained networks as one module: what export.py puts into a single ONNX graph.

Each member gets the ensemble's input (normalised with the ensemble's mean and std at its size)
turned into its own: un-normalised, resized to the member's size (bilinear, when it differs) and
normalised with the member's mean and std; optionally averaged over the flips of TTA; then the
members' probabilities are averaged with their weights (``ensemble`` says why probabilities) and
returned as logits, so the graph has the output of any single model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PROB_EPS = 1e-7  # averaged probabilities are kept inside (0, 1) when turned back into logits


@dataclass(frozen=True)
class MemberInput:
    """A member's input: its side in pixels and the mean and std it was normalised with."""

    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def tta_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Mean logits over the image, its horizontal and its vertical flip (test-time augmentation).

    Logits, not probabilities, are averaged for both heads: for ArcFace that is the mean of
    ``s * cos theta``; no label is involved either way.
    """
    return torch.stack([model(images), model(images.flip(-1)), model(images.flip(-2))]).mean(0)


def _channels(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)


class MeanOfProbabilities(nn.Module):
    """Members' weighted mean probability, as logits; input normalised as ``source`` describes."""

    def __init__(self, members: Sequence[nn.Module], inputs: Sequence[MemberInput], weights: Sequence[float],
                 source: MemberInput, tta: bool = False) -> None:
        super().__init__()
        if not (len(members) == len(inputs) == len(weights)) or not members:
            raise ValueError("an ensemble needs one input description and one weight per member")
        if not all(0 < w < math.inf for w in weights):  # NaN fails too: it would make every output NaN
            raise ValueError(f"an ensemble's weights must be finite numbers above 0, not {list(weights)}")
        self.members = nn.ModuleList(members)
        self.sizes = [i.img_size for i in inputs]
        self.tta = tta
        total = float(sum(weights))
        self.register_buffer("weights", torch.tensor([w / total for w in weights], dtype=torch.float32))
        self.register_buffer("source_mean", _channels(source.mean))
        self.register_buffer("source_std", _channels(source.std))
        self.register_buffer("means", torch.stack([_channels(i.mean) for i in inputs]))
        self.register_buffer("stds", torch.stack([_channels(i.std) for i in inputs]))

    def member_input(self, images: torch.Tensor, index: int) -> torch.Tensor:
        """``images`` as member ``index`` was trained to see them."""
        pixels = images * self.source_std + self.source_mean
        size = self.sizes[index]
        if pixels.shape[-1] != size or pixels.shape[-2] != size:
            pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
        return (pixels - self.means[index]) / self.stds[index]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probs = 0
        for index, member in enumerate(self.members):
            inputs = self.member_input(images, index)
            logits = tta_logits(member, inputs) if self.tta else member(inputs)
            probs = probs + self.weights[index] * torch.sigmoid(logits.float())
        return torch.logit(probs.clamp(PROB_EPS, 1 - PROB_EPS))
