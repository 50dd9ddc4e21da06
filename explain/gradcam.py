"""Grad-CAM of the evaluation logits: per-class maps, overlays, grids and GIFs (pictures as bytes or files);
attention maps, per-layer views and the spatial transformer's warp as pictures (maps from explain.attention).

Grad-CAM differentiates the model's own evaluation logits (for ArcFace: ``SCALE * cos theta``
against the trained centres, no margin, no label), the very logits test.py turns into
probabilities. EigenCAM ignores the class: its map is the same for all.
"""
from __future__ import annotations

import difflib
import io
import re
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from data.labels import CLASS_INDEX, CLASSES, parse_labels
from data.transforms import unnormalised
from explain.attention import attention_map, block_attention_maps, layer_maps
from models.family import SWIN, VIT, family_of
from models.vit import PatchGrid
from utils.errors import RunError
from utils.figures import Tile, in_rows, png_bytes, thumbnail, tile_sheet
from utils.files import atomic_write_bytes

METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM, "eigencam": EigenCAM,
}
# Swin (timm): the first norm of the last block sees the final token map, before its attention
SWIN_TARGET_LAYER = "backbone.layers[-1].blocks[-1].norm1"
# ViT family: the same place, the last block's first norm (its class token still reads every patch there)
VIT_TARGET_LAYER = "backbone.blocks[-1].norm1"
GIF_SIDE = 512  # longer side of the GIF frames and the grid panels
# Pictures have the photo's size up to this longer side: a 4000 x 2672 original would take ~20 MB and
# seconds per PNG, for a map computed at the model's input size (224 px) anyway.
MAX_SIDE = 1024
PASS, FAIL = "\u2713", "\u2717"  # check mark, ballot x


# ---------------------------------------------------------------------------------------------
# The CAM model and its target layer
# ---------------------------------------------------------------------------------------------


def default_target_layer(model: nn.Module) -> str:
    """Swin and ViT family: the last block's first norm; other timm backbones: their last feature stage."""
    backbone = model.backbone
    kind = family_of(backbone)
    if kind == VIT:
        return VIT_TARGET_LAYER
    if kind == SWIN:
        return SWIN_TARGET_LAYER
    feature_info = getattr(backbone, "feature_info", None)
    if feature_info:
        return f"backbone.{feature_info[-1]['module']}"
    raise ValueError(f"no default Grad-CAM layer for {type(backbone).__name__}: give --target-layer")


def find_module(model: nn.Module, path: str) -> nn.Module:
    """The sub-module at a dotted path (``a.b.0.c``, ``a.b[-1].c``); a wrong path lists nearby names."""
    parts = re.sub(r"\[(-?\d+)\]", r".\1", path).split(".")
    module = model
    for depth, part in enumerate(parts):
        children = dict(module.named_children())
        if part in children:
            module = children[part]
        elif re.fullmatch(r"-?\d+", part) and isinstance(module, (nn.Sequential, nn.ModuleList)) \
                and -len(module) <= int(part) < len(module):
            module = module[int(part)]
        else:
            names = [name for name, _ in model.named_modules() if name]
            nearby = difflib.get_close_matches(".".join(parts), names, n=6, cutoff=0.5) or [
                ".".join([*parts[:depth], child]) for child in children]
            raise ValueError(f"--target-layer {path!r}: no module {'.'.join(parts[:depth + 1])!r}; "
                             f"nearby names: {', '.join(nearby[:8]) or '(none)'}")
    return module


def nhwc_to_nchw(activations: torch.Tensor) -> torch.Tensor:
    """Swin's (B, H, W, C) token maps as the (B, C, H, W) maps Grad-CAM expects."""
    return activations.permute(0, 3, 1, 2)


def reshape_for(model: nn.Module, layer: nn.Module) -> Callable | None:
    """Channels-last backbones (Swin) give NHWC maps and ViT-family blocks token sequences (laid on their patch
    grid, prefix tokens dropped) everywhere but in their convolutions."""
    in_backbone = any(module is layer for module in model.backbone.modules())
    if not in_backbone or isinstance(layer, nn.Conv2d):
        return None
    if family_of(model.backbone) == VIT:
        return PatchGrid.of(model.backbone)
    return nhwc_to_nchw if getattr(model.backbone, "output_fmt", "NCHW") == "NHWC" else None


def build_cam(model: nn.Module, method: str = "gradcam", target_layer: str | None = None) -> BaseCAM:
    """A pytorch_grad_cam object on the evaluation logits of ``model`` at ``target_layer``.

    Grad-CAM calls the model with images only, never labels, so an ArcFace head gives ``SCALE * cos theta``
    against its trained centres (the margin is a training-only term): exactly test.py's logits.
    """
    layer = find_module(model, target_layer or default_target_layer(model))
    return METHODS[method](model.eval(), [layer], reshape_transform=reshape_for(model, layer))


# ---------------------------------------------------------------------------------------------
# Maps and pictures
# ---------------------------------------------------------------------------------------------


def class_maps(cam: BaseCAM, image: Image.Image, transform: Callable, classes: Sequence[int]
               ) -> tuple[np.ndarray, np.ndarray]:
    """CAM maps (K, H, W) in [0, 1] at the image's own size, and the image's six probabilities.

    All requested classes go through one forward/backward: the image is repeated once per class
    and each copy's target is its class (samples do not interact in eval mode).
    """
    device = next(cam.model.parameters()).device
    batch = transform(image)[None].repeat(len(classes), 1, 1, 1).to(device)
    maps = cam(input_tensor=batch, targets=[ClassifierOutputTarget(c) for c in classes])
    probs = torch.sigmoid(cam.outputs[0].detach().float()).cpu().numpy()
    width, height = image.size
    return np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in maps]), probs


def overlay(image: Image.Image, cam_map: np.ndarray) -> np.ndarray:
    """The photo under a JET heatmap of ``cam_map``, uint8 RGB at the image's size."""
    return show_cam_on_image(np.asarray(image, dtype=np.float32) / 255.0, cam_map, use_rgb=True)


def caption(name: str, prob: float, threshold: float) -> str:
    return f"{name} {prob:.2f} {PASS if prob >= threshold else FAIL}"


def grid_png(image: Image.Image, overlays: Sequence[np.ndarray], names: Sequence[str], probs: Sequence[float],
             thresholds: Sequence[float]) -> bytes:
    """The photo, then one overlay per class titled ``name prob ✓/✗`` (green when it passes)."""
    tiles = [Tile(image, "photo")]
    for overlay, name, prob, threshold in zip(overlays, names, probs, thresholds):
        tiles.append(Tile(overlay, caption(name, prob, threshold), "green" if prob >= threshold else "red"))
    return tile_sheet(in_rows(tiles, 4), side=GIF_SIDE, inches=3.6, fontsize=11)


def gif_bytes(overlays: Sequence[np.ndarray], captions: Sequence[str], seconds: float = 1.0,
              side: int = GIF_SIDE) -> bytes:
    """An endless animation of the overlays (longer side at most ``side``), each with its caption."""
    frames = []
    for pixels, text in zip(overlays, captions):
        frame = thumbnail(pixels, side)
        draw = ImageDraw.Draw(frame)
        draw.rectangle((0, 0, frame.width, 22), fill=(0, 0, 0))
        draw.text((6, 4), text.replace(PASS, "(pass)").replace(FAIL, "(below threshold)"), fill=(255, 255, 255))
        frames.append(frame)
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=int(seconds * 1000),
                   loop=0)
    return buffer.getvalue()


def explain_image(cam: BaseCAM, image: Image.Image, stem: str, transform: Callable, classes: Sequence[int],
                  thresholds: np.ndarray, folder: Path, gif: bool, model_file: Path) -> list[Path]:
    """All pictures of one image (files named after ``stem``); returns the files written. Non-finite
    logits or maps are a RunError naming ``model_file``: nothing is drawn from them."""
    maps, probs = class_maps(cam, image, transform, classes)
    logits = cam.outputs[:1].detach().float().cpu().numpy()  # what the probabilities come from
    if not (np.isfinite(logits).all() and np.isfinite(maps).all()):
        raise RunError(f"{model_file}: the model computed non-finite logits or Grad-CAM maps (NaN or inf) "
                       f"for {stem}; nothing is drawn from them")
    names = [CLASSES[c] for c in classes]
    overlays = [overlay(image, m) for m in maps]
    written = []
    for name, pixels in zip(names, overlays):
        written.append(folder / f"{stem}_{name}.png")
        atomic_write_bytes(png_bytes(pixels), written[-1])
    chosen_probs, chosen_thresholds = probs[list(classes)], thresholds[list(classes)]
    written.append(folder / f"{stem}_grid.png")
    atomic_write_bytes(grid_png(image, overlays, names, chosen_probs, chosen_thresholds), written[-1])
    if gif:
        captions = [caption(n, p, t) for n, p, t in zip(names, chosen_probs, chosen_thresholds)]
        written.append(folder / f"{stem}.gif")
        atomic_write_bytes(gif_bytes(overlays, captions), written[-1])
    return written


def unique_stem(path: Path, taken: set[str]) -> str:
    """The file's stem, prefixed by its folders when another image already wrote under that stem."""
    stem, parent = path.stem, path.resolve().parent
    while stem in taken and parent != parent.parent:
        stem, parent = f"{parent.name}_{stem}", parent.parent
    taken.add(stem)
    return stem


def class_indices(names: Sequence[str]) -> list[int]:
    """``['all']`` -> every class; otherwise the named ones (unknown names are a ValueError)."""
    if list(names) == ["all"]:
        return list(range(len(CLASSES)))
    return [CLASS_INDEX[name] for name in parse_labels(names)]


# ---------------------------------------------------------------------------------------------
# Attention maps, per-layer views and the spatial transformer's warp
# ---------------------------------------------------------------------------------------------


def at_image_size(token_map: torch.Tensor, image: Image.Image) -> np.ndarray:
    """A (h, w) token-grid map resized to the image (bilinear), float32."""
    return cv2.resize(token_map.float().cpu().numpy(), image.size, interpolation=cv2.INTER_LINEAR)


def scaled_to_max(values: np.ndarray) -> np.ndarray:
    """``values / max`` (rollout's normalisation: a flat map stays flat rather than becoming noise)."""
    top = float(values.max())
    return values / top if top > 0 else np.zeros_like(values)


def min_max(values: np.ndarray) -> np.ndarray:
    """``values`` stretched to [0, 1] (zeros when constant)."""
    low, span = float(values.min()), float(values.max() - values.min())
    return (values - low) / span if span > 0 else np.zeros_like(values)


def explain_attention(model: nn.Module, image: Image.Image, stem: str, transform: Callable, folder: Path,
                      head_fusion: str = "mean", discard_ratio: float = 0.0) -> list[Path]:
    """``<stem>_rollout.png``: the photo under its attention map (rollout, or Swin's last-stage windows)."""
    device = next(model.parameters()).device
    token_map = attention_map(model, transform(image)[None].to(device), head_fusion, discard_ratio)[0]
    path = folder / f"{stem}_rollout.png"
    atomic_write_bytes(png_bytes(overlay(image, scaled_to_max(at_image_size(token_map, image)))), path)
    return [path]


def explain_layers(model: nn.Module, image: Image.Image, stem: str, transform: Callable, folder: Path
                   ) -> list[Path]:
    """``<stem>_layer<k>.png`` per stage or block (mean activation, min-max scaled) and ``<stem>_layers.gif``."""
    device = next(model.parameters()).device
    names, maps = layer_maps(model, transform(image)[None].to(device))
    overlays = [overlay(image, min_max(at_image_size(m[0], image))) for m in maps]
    captions = [f"{name} ({m.shape[1]} x {m.shape[2]})" for name, m in zip(names, maps)]
    return write_depths(overlays, captions, folder, f"{stem}_layer", f"{stem}_layers")


def write_depths(overlays: Sequence[np.ndarray], captions: Sequence[str], folder: Path, frame_stem: str,
                 gif_stem: str) -> list[Path]:
    """``<frame_stem><k>.png`` per depth (k from 1) and ``<gif_stem>.gif`` cycling them; the files written."""
    written = []
    for k, pixels in enumerate(overlays, start=1):
        written.append(folder / f"{frame_stem}{k}.png")
        atomic_write_bytes(png_bytes(pixels), written[-1])
    written.append(folder / f"{gif_stem}.gif")
    atomic_write_bytes(gif_bytes(overlays, captions), written[-1])
    return written


def explain_block_attention(model: nn.Module, image: Image.Image, stem: str, transform: Callable, folder: Path,
                            head_fusion: str = "mean") -> list[Path]:
    """``<stem>_attention<k>.png`` per attention block (heads fused) and ``<stem>_attention.gif`` of them."""
    device = next(model.parameters()).device
    names, maps = block_attention_maps(model, transform(image)[None].to(device), head_fusion)
    overlays = [overlay(image, scaled_to_max(at_image_size(m[0], image))) for m in maps]
    captions = [f"{name}, heads {head_fusion}" for name in names]
    return write_depths(overlays, captions, folder, f"{stem}_attention", f"{stem}_attention")


def explain_over_epochs(cams: Sequence[tuple[str, BaseCAM]], image: Image.Image, stem: str, transform: Callable,
                        classes: Sequence[int], folder: Path) -> list[Path]:
    """``<stem>_epochs.png``: one row per checkpoint (``cams``: (label, CAM) in epoch order), one overlay per class
    titled with that checkpoint's probability; ``<stem>_epochs.gif``: the rows one after another."""
    rows, titles, frames = [], [], []
    for label, cam in cams:
        maps, probs = class_maps(cam, image, transform, classes)
        overlays = [overlay(image, m) for m in maps]
        titles.append((label, "black"))
        rows.append([Tile(o, f"{CLASSES[c]} {probs[c]:.2f}") for o, c in zip(overlays, classes)])
        frames.append(side_by_side([thumbnail(o, GIF_SIDE // 2) for o in overlays]))
    sheet, gif = folder / f"{stem}_epochs.png", folder / f"{stem}_epochs.gif"
    atomic_write_bytes(tile_sheet(rows, f"{stem}: Grad-CAM per class over training", titles, side=GIF_SIDE // 2,
                                  inches=2.4, fontsize=8), sheet)
    atomic_write_bytes(gif_bytes(frames, [label for label, _ in cams], side=max(f.shape[1] for f in frames)), gif)
    return [sheet, gif]


def explain_target_layers(model: nn.Module, method: str, layers: Sequence[str], image: Image.Image, stem: str,
                          transform: Callable, classes: Sequence[int], folder: Path) -> list[Path]:
    """``<stem>_target_layers.png``: one row per class, one column per target layer, side by side."""
    columns = []
    for layer in layers:
        maps, probs = class_maps(build_cam(model, method, layer), image, transform, classes)
        columns.append([overlay(image, m) for m in maps])
    rows = [[Tile(columns[j][i], layer) for j, layer in enumerate(layers)] for i in range(len(classes))]
    titles = [(f"{CLASSES[c]} {probs[c]:.2f}", "black") for c in classes]
    path = folder / f"{stem}_target_layers.png"
    atomic_write_bytes(tile_sheet(rows, f"{stem}: {method} at each target layer", titles, side=GIF_SIDE // 2,
                                  inches=2.6, fontsize=7), path)
    return [path]


def side_by_side(pictures: Sequence[Image.Image]) -> np.ndarray:
    """Pictures of one height in a row (left to right), as one RGB array."""
    height = max(p.height for p in pictures)
    row = Image.new("RGB", (sum(p.width for p in pictures), height))
    x = 0
    for picture in pictures:
        row.paste(picture, (x, 0))
        x += picture.width
    return np.asarray(row)


def explain_warp(model: nn.Module, image: Image.Image, stem: str, transform: Callable, mean: Sequence[float],
                 std: Sequence[float], folder: Path) -> list[Path]:
    """``<stem>_stn.png``: the model's input beside the spatial transformer's warp of it, side by side."""
    device = next(model.parameters()).device
    batch = transform(image)[None].to(device)
    with torch.no_grad():
        warped = model.eval().stn(batch)
    pair = side_by_side([unnormalised(batch[0], mean, std), unnormalised(warped[0], mean, std)])
    path = folder / f"{stem}_stn.png"
    atomic_write_bytes(png_bytes(pair), path)
    return [path]
