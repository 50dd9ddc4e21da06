"""Per-class Grad-CAM (or the attention map) of a trained checkpoint: where the model looks for each disease.

    python visual.py --cfg configs/demo_cpu.yaml --images leaf.jpg more_leaves/ --gif
    python visual.py --cfg configs/demo_cpu.yaml          # no --images: the first test leaf of each class
    python visual.py --checkpoint RUN/ckpt_best.pth --images leaf.jpg --classes scab rust --method gradcam++
    python visual.py --checkpoint RUN-cv/ensemble.json --member 2 --images leaf.jpg  # one member of an ensemble
    python visual.py --cfg configs/demo_vit_cpu.yaml --method rollout --head-fusion max --discard-ratio 0.9
    python visual.py --cfg configs/demo_cpu.yaml --layers  # also one panel per stage/block, and a GIF of them

For every image: one overlay per class (``<stem>_<class>.png``, the image's own size, or shrunk to
``--max-side`` when larger), a grid (``<stem>_grid.png``: the photo and one panel per class, titled
with its probability and whether it passes its threshold) and, with ``--gif``, an animation cycling
the classes (``<stem>.gif``).
Written to ``<run>/cam/`` by default. The maps are those of ``explain`` (the evaluation logits,
exactly test.py's). An ensemble file is explained through one member (``--member``, default 1):
a Grad-CAM map is one network's, so the maps, captions and thresholds are that member's own run's,
and the log says which member it is; written to ``<member's run>/cam/`` by default.

``--method rollout`` draws the attention map instead (``<stem>_rollout.png``, not per class): attention
rollout for ViT-family models, the last stage's window attention for Swin (attention.py). ``--layers``
adds ``<stem>_layer<k>.png`` per stage (Swin, CNNs) or block (ViT) and ``<stem>_layers.gif``, and for attention
models ``<stem>_attention<k>.png`` per attention block (heads fused by ``--head-fusion``) and
``<stem>_attention.gif``: a ViT block's class-token attention over the patches, a Swin block's attention
received within each window (on its stage's grid). A model
with a spatial transformer (MODEL.STN) also gets ``<stem>_stn.png``: its input beside the warped view.
Several ``--target-layer``s also draw ``<stem>_target_layers.png`` (a class per row, a layer per column);
``--epochs`` walks the run's ``ckpt_epoch_N.pth`` files (``SAVE_FREQ``) in epoch order and draws the same
photo's per-class maps at each epoch (``<stem>_epochs.png`` and ``<stem>_epochs.gif``).

    python visual.py --cfg configs/demo_cpu.yaml --epochs --classes scab rust
    python visual.py --cfg configs/demo_cpu.yaml --target-layer backbone.layers[0] backbone.layers[1]
"""
from __future__ import annotations

import argparse
from argparse import Namespace
from pathlib import Path

from data.dataset import collect_images, first_leaf_of_each_class
from data.images import image_failure, load_image
from deploy.model_file import explained_checkpoint
from evaluation.inference import Predictor
from evaluation.thresholds import resolve_thresholds
from explain.attention import HEAD_FUSIONS, attention_kind
from explain.gradcam import (
    MAX_SIDE,
    METHODS,
    SWIN_TARGET_LAYER,
    VIT_TARGET_LAYER,
    build_cam,
    class_indices,
    default_target_layer,
    explain_attention,
    explain_block_attention,
    explain_image,
    explain_layers,
    explain_over_epochs,
    explain_target_layers,
    explain_warp,
    unique_stem,
)
from training.rundir import RunDir, add_run_arguments, find_checkpoint
from utils.cli import run_cli
from utils.errors import EXIT_OK
from utils.log import create_logger
from utils.runtime import select_device


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--images", nargs="+", metavar="PATH",
                        help="image files, folders or globs (default: the first test leaf of each class of the "
                             "run's data path)")
    parser.add_argument("--classes", nargs="+", default=["all"], help="'all' (default) or class names")
    parser.add_argument("--method", default="gradcam", choices=[*sorted(METHODS), ROLLOUT],
                        help="a Grad-CAM method, or rollout: the attention map (ViT family; Swin: last-stage windows)")
    parser.add_argument("--head-fusion", default="mean", choices=HEAD_FUSIONS,
                        help="rollout: how the attention heads are combined (default mean)")
    parser.add_argument("--discard-ratio", type=float, default=0.0,
                        help="rollout: the weakest fraction of each block's attention set to zero (default 0)")
    parser.add_argument("--layers", action="store_true",
                        help="also one mean-activation panel per stage/block and a GIF of them; for ViT-family and "
                             "Swin models also each attention block's map (heads: --head-fusion) and a GIF")
    parser.add_argument("--target-layer", nargs="+", metavar="LAYER",
                        help=f"dotted module path (default: {SWIN_TARGET_LAYER} for Swin, {VIT_TARGET_LAYER} for ViT, "
                             "the last stage for CNNs); several: also a panel of them side by side")
    parser.add_argument("--epochs", action="store_true",
                        help="also the maps of each ckpt_epoch_N.pth of the run (SAVE_FREQ), in epoch order")
    parser.add_argument("--thresholds", type=Path, metavar="FILE", help="thresholds JSON (default: the run's)")
    parser.add_argument("--output", type=Path, help="output folder (default: <run>/cam)")
    parser.add_argument("--gif", action="store_true", help="also write an animated GIF cycling the classes")
    parser.add_argument("--max-side", type=int, default=MAX_SIDE,
                        help=f"larger photos are shrunk to this longer side first (default {MAX_SIDE}; 0: never)")
    parser.add_argument("--member", type=int, default=1, help="an ensemble file's member to explain (1 = first)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return parser.parse_args(argv)


ROLLOUT = "rollout"


def can_draw_attention(model) -> bool:
    """Whether ``model``'s attention can be captured (timm ViT family, Swin V1)."""
    try:
        attention_kind(model)
    except ValueError:
        return False
    return True


def epoch_cams(run: RunDir, args: Namespace, device, logger) -> list[tuple[str, object]]:
    """(``epoch N``, CAM) of each ckpt_epoch_N.pth of the run, in epoch order, at the same target layer."""
    if args.method == ROLLOUT:
        raise ValueError("--epochs draws Grad-CAM maps: not with --method rollout")
    found = run.epoch_checkpoints()
    if not found:
        raise FileNotFoundError(f"{run.path}: no ckpt_epoch_N.pth to walk (train with SAVE_FREQ N)")
    logger.info(f"--epochs: {len(found)} checkpoints, {found[0].name} .. {found[-1].name}")
    cams = []
    for path in found:
        model = Predictor.from_checkpoint(path, device).model
        layer = args.target_layer[0] if args.target_layer else default_target_layer(model)
        cams.append((f"epoch {path.stem.rsplit('_', 1)[1]}", build_cam(model, args.method, layer)))
    return cams


def example_leaves(data_path: str) -> list[str]:
    """Without --images: the first test leaf of each class of the run's own tree, as the fork's visual.py."""
    try:
        return [path for path, _ in first_leaf_of_each_class(data_path)]
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error}; give --images") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    classes = class_indices(args.classes)
    device = select_device(args.device)
    path = find_checkpoint(args)
    checkpoint, note = explained_checkpoint(path, args.member)
    predictor = Predictor.from_checkpoint(checkpoint, device)
    run = RunDir.of_checkpoint(predictor.path)
    cam_folder = args.output or run.cam
    logger = create_logger(cam_folder, name="visual")
    if note:
        logger.info(note)
    thresholds = resolve_thresholds(args.thresholds, run, predictor, logger)
    model, transform = predictor.model, predictor.transform
    layers = [] if args.method == ROLLOUT else args.target_layer or [default_target_layer(model)]
    if args.method == ROLLOUT:
        try:
            kind = attention_kind(model)
        except ValueError as error:
            raise ValueError(f"{predictor.path}: --method rollout: {error}") from None
        described = f"{args.method} ({kind}, heads {args.head_fusion}, discard ratio {args.discard_ratio})"
    else:
        cam = build_cam(model, args.method, layers[0])
        described = f"{args.method} at {', '.join(layers)}"
    epochs = epoch_cams(run, args, device, logger) if args.epochs else []
    has_attention = args.layers and can_draw_attention(model)
    preprocessing = predictor.info.preprocessing
    written, stems = [], set()
    images = args.images or example_leaves(predictor.info.data_path)
    for path in collect_images(images, logger):
        try:
            image = load_image(path, args.max_side or None)
        except Exception as error:  # noqa: BLE001 - Pillow raises many types on bad data; all mean "skip"
            logger.warning(f"{path}: skipped ({image_failure(error)})")
            continue
        if args.max_side:
            image.thumbnail((args.max_side, args.max_side))
        stem = unique_stem(path, stems)
        if args.method == ROLLOUT:
            files = explain_attention(model, image, stem, transform, cam_folder, args.head_fusion, args.discard_ratio)
        else:
            files = explain_image(cam, image, stem, transform, classes, thresholds, cam_folder, args.gif,
                                  predictor.path)
        if args.layers:
            files += explain_layers(model, image, stem, transform, cam_folder)
            if has_attention:
                files += explain_block_attention(model, image, stem, transform, cam_folder, args.head_fusion)
        if len(layers) > 1:
            files += explain_target_layers(model, args.method, layers, image, stem, transform, classes, cam_folder)
        if epochs:
            files += explain_over_epochs(epochs, image, stem, transform, classes, cam_folder)
        if model.stn is not None:
            files += explain_warp(model, image, stem, transform, preprocessing.mean, preprocessing.std, cam_folder)
        written.extend(files)
        logger.info(f"{path}: " + " ".join(f.name for f in files))
    logger.info(f"{described}: wrote {len(written)} files to {cam_folder}")
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
