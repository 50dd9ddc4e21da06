"""Attention you can see: rollout for ViT-family models, Swin's last-stage window attention, per-layer maps.

Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"; the recipe
of jacobgil/vit-explain that the ArcPSA report follows): every block's attention probabilities are
captured (timm's fused attention is switched off meanwhile, since ``scaled_dot_product_attention``
never materialises them), the heads fused (mean, max or min), optionally the weakest entries
discarded, the identity added for the residual path and the rows renormalised; the product over
the blocks says how much each input token flows into each output token. The class token's row
over the patch columns is the map (models without a class token: the mean of the patch rows).

Swin has no token that sees the whole image and its shifted windows make rollout undefined, so
for Swin the map is the last stage's window attention: the attention each token receives from the
queries of its own window, laid back on the token grid (shift undone) and averaged over the
stage's blocks. Neither map is class specific.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from timm.models.swin_transformer import SwinTransformer, window_reverse
from torch import nn

from models.family import SWIN, VIT, family_of

HEAD_FUSIONS = ("mean", "max", "min")


def attention_kind(model: nn.Module) -> str:
    """'vit' or 'swin': which attention map ``model``'s backbone has (anything else is a ValueError)."""
    backbone = model.backbone
    kind = family_of(backbone)
    if kind == VIT or (kind == SWIN and isinstance(backbone, SwinTransformer)):  # Swin V2's attention differs
        return kind
    raise ValueError(f"attention maps need a timm ViT, DeiT, EVA or Swin backbone, not {type(backbone).__name__} "
                     "(a CNN has no attention: use a Grad-CAM method)")


@contextmanager
def captured_attention(modules: Sequence[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Collect each timm attention module's probabilities (B, heads, N, N), in forward order, while inside.

    The probabilities are what the module's ``attn_drop`` receives (the identity in eval mode);
    ``fused_attn`` is switched off for the capture and restored afterwards.
    """
    captured: list[torch.Tensor] = []
    fused = [module.fused_attn for module in modules]
    hooks = [module.attn_drop.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
             for module in modules]
    for module in modules:
        module.fused_attn = False
    try:
        yield captured
    finally:
        for module, was_fused, hook in zip(modules, fused, hooks):
            module.fused_attn = was_fused
            hook.remove()


def fuse_heads(attention: torch.Tensor, fusion: str = "mean") -> torch.Tensor:
    """(B, heads, N, N) -> (B, N, N) by the mean, max or min over the heads."""
    if fusion == "mean":
        return attention.mean(dim=1)
    if fusion == "max":
        return attention.amax(dim=1)
    if fusion == "min":
        return attention.amin(dim=1)
    raise ValueError(f"head fusion must be one of {', '.join(HEAD_FUSIONS)}, got {fusion!r}")


def discard_lowest(attention: torch.Tensor, ratio: float) -> torch.Tensor:
    """(B, N, N) with the weakest ``ratio`` of each matrix's entries set to zero (noise in deep blocks)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"discard ratio must be in [0, 1), got {ratio}")
    flat = attention.flatten(1)
    count = int(flat.shape[1] * ratio)
    if count == 0:
        return attention
    lowest = flat.topk(count, dim=1, largest=False).indices
    return flat.scatter(1, lowest, 0.0).view_as(attention)


def rollout(attentions: Sequence[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """Joint attention (B, N, N) of a stack of blocks' attention (each (B, heads, N, N), first block first).

    Each block contributes ``rownorm(fused + I)``; the result is their product, last block leftmost.
    """
    tokens = attentions[0].shape[-1]
    eye = torch.eye(tokens, dtype=attentions[0].dtype, device=attentions[0].device)
    joint = eye.expand(attentions[0].shape[0], tokens, tokens)
    for attention in attentions:
        flow = discard_lowest(fuse_heads(attention, head_fusion), discard_ratio) + eye
        joint = (flow / flow.sum(dim=-1, keepdim=True)) @ joint
    return joint


def rollout_map(joint: torch.Tensor, num_prefix_tokens: int, grid_size: tuple[int, int],
                class_token: bool = True) -> torch.Tensor:
    """(B, H, W): the class token's row of the joint attention over the patch tokens, on the patch grid.

    Without a class token (average-pooled models) the rows of all patch tokens are averaged.
    """
    rows = joint[:, 0] if class_token else joint[:, num_prefix_tokens:].mean(dim=1)
    return rows[:, num_prefix_tokens:].reshape(joint.shape[0], *grid_size)


def vit_attentions(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Every block's attention (B, heads, N, N) of a ViT-family ``MultiLabelNet`` on ``images``, first block first."""
    with captured_attention([block.attn for block in model.backbone.blocks]) as attentions:
        model.eval()(images)
    return attentions


def on_patch_grid(joint: torch.Tensor, backbone: nn.Module) -> torch.Tensor:
    """:func:`rollout_map` of a ViT-family backbone's (B, N, N) attention: its prefix tokens, grid, class token."""
    return rollout_map(joint, backbone.num_prefix_tokens, backbone.patch_embed.grid_size,
                       getattr(backbone, "cls_token", None) is not None)


@torch.no_grad()
def vit_rollout(model: nn.Module, images: torch.Tensor, head_fusion: str = "mean",
                discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout (B, H, W) of a ViT-family ``MultiLabelNet`` on normalised ``images``, patch grid."""
    return on_patch_grid(rollout(vit_attentions(model, images), head_fusion, discard_ratio), model.backbone)


def received_in_windows(attention: torch.Tensor, block: nn.Module, height: int, width: int,
                        head_fusion: str = "mean") -> torch.Tensor:
    """(B, H, W): the attention each token receives within its window (mean over the window's queries).

    ``attention`` is one Swin block's (B * windows, heads, N, N); the windows are laid back on the
    block's padded grid, cropped to ``height`` x ``width`` and its cyclic shift undone, as the block
    itself does with its output.
    """
    window = block.window_size
    received = fuse_heads(attention, head_fusion).mean(dim=1).view(-1, window[0], window[1], 1)
    padded = (-(-height // window[0]) * window[0], -(-width // window[1]) * window[1])
    grid = window_reverse(received, window, *padded)[:, :height, :width, 0]
    if any(block.shift_size):
        grid = torch.roll(grid, shifts=tuple(block.shift_size), dims=(1, 2))
    return grid


def swin_block_maps(model: nn.Module, images: torch.Tensor, blocks: Sequence[nn.Module], head_fusion: str = "mean"
                    ) -> list[torch.Tensor]:
    """(B, H, W) of each of ``blocks`` (Swin blocks of ``model``) on its stage's token grid: the window attention
    each token receives (:func:`received_in_windows`)."""
    sizes: list[tuple[int, int]] = []
    hooks = [block.register_forward_pre_hook(lambda _m, args: sizes.append(tuple(args[0].shape[1:3])))
             for block in blocks]
    try:
        with captured_attention([block.attn for block in blocks]) as attentions:
            model.eval()(images)
    finally:
        for hook in hooks:
            hook.remove()
    return [received_in_windows(a, block, *size, head_fusion) for a, block, size in zip(attentions, blocks, sizes)]


@torch.no_grad()
def swin_window_attention(model: nn.Module, images: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """(B, H, W) on the last stage's token grid: window attention received, averaged over that stage's blocks."""
    return torch.stack(swin_block_maps(model, images, list(model.backbone.layers[-1].blocks), head_fusion)).mean(dim=0)


@torch.no_grad()
def block_attention_maps(model: nn.Module, images: torch.Tensor, head_fusion: str = "mean"
                         ) -> tuple[list[str], list[torch.Tensor]]:
    """Names and (B, h, w) maps of every attention block, first block first, heads fused by ``head_fusion``.

    ViT family: the class token's attention over the patches (without a class token: the mean over the
    patches' rows), on the patch grid. Swin: the attention each token receives within its window, on its
    stage's token grid (a block sees only its windows: the maps show where, inside each window, it looks).
    """
    backbone = model.backbone
    if attention_kind(model) == "vit":
        maps = [on_patch_grid(fuse_heads(a, head_fusion), backbone) for a in vit_attentions(model, images)]
        return [f"block {i + 1}/{len(maps)}" for i in range(len(maps))], maps
    stages = [s for s, stage in enumerate(backbone.layers) for _ in stage.blocks]
    maps = swin_block_maps(model, images, [block for stage in backbone.layers for block in stage.blocks], head_fusion)
    return [f"stage {s + 1} block {i + 1}/{len(maps)}" for i, s in enumerate(stages)], maps


def attention_map(model: nn.Module, images: torch.Tensor, head_fusion: str = "mean",
                  discard_ratio: float = 0.0) -> torch.Tensor:
    """(B, h, w) token-grid map: rollout for ViT-family models, last-stage window attention for Swin."""
    if attention_kind(model) == "vit":
        return vit_rollout(model, images, head_fusion, discard_ratio)
    return swin_window_attention(model, images, head_fusion)


@torch.no_grad()
def layer_maps(model: nn.Module, images: torch.Tensor) -> tuple[list[str], list[torch.Tensor]]:
    """Names and (B, h, w) mean activations over the channels of every stage (Swin, CNNs) or block (ViT).

    Taken from timm's ``forward_intermediates`` (NCHW maps; a ViT's tokens already on the patch grid,
    prefix tokens dropped), after the spatial transformer when the model has one.
    """
    backbone = model.eval().backbone
    if getattr(model, "stn", None) is not None:
        images = model.stn(images)
    features = backbone.forward_intermediates(images, intermediates_only=True)
    unit = "block" if family_of(backbone) == VIT else "stage"
    names = [f"{unit} {i + 1}/{len(features)}" for i in range(len(features))]
    return names, [feature.float().mean(dim=1) for feature in features]
