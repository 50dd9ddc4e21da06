"""Evaluate a trained checkpoint on a prepared split, or predict the labels of new photos.

    python test.py --cfg configs/demo_cpu.yaml --data-path demo/dataset          # the test split
    python test.py --checkpoint RUN/ckpt_best.pth --images photos/ extra/*.jpg  # new photos
    python test.py --cfg ... --split val --tune-thresholds                      # retune on validation
    python test.py --checkpoint RUN/ckpt_best.onnx --images photos/             # an export.py file
    python test.py --checkpoint RUN-fold2/ckpt_best.pth --split val --tta       # a K-fold member's own fold
    python test.py --checkpoint RUN-cv/ensemble.json --data-path dataset         # an ensemble (scripts/cv.py)

The model, its preprocessing (the validation transform) and the class names come from the
checkpoint's own config, so a checkpoint alone is enough. Decision thresholds come from
``--thresholds FILE``, else the run's ``thresholds.json`` (tuned on validation by main.py, never on
the split being tested; with ``--tta``, ``thresholds_tta.json``, tuned on validation with TTA), else
the checkpoint's, else 0.5 with a warning.

Labelled mode writes to ``<run>/test_<split>/`` (or ``--output``): metrics.csv/.json, predictions.csv,
submission.csv and plots. Unlabelled mode (``--images``) writes predictions.csv and submission.csv to
``<run>/predict/``. ``predictions.csv``'s ``predicted`` column is plain thresholding (what metrics.csv
scores); ``submission.csv`` applies Kaggle's rules on top (see ``reports.submission_labels``).

``--backend onnx`` computes the logits with ONNX Runtime (an ``.onnx`` as --checkpoint, or the
checkpoint exported in memory), ``--backend openvino`` with OpenVINO from the same files; ``auto``
(the default) runs an ``.onnx`` on OpenVINO for a transformer's FP32 file or an INT8 file admitted on
OpenVINO and on ONNX Runtime for the rest, and a checkpoint on the CPU the same way when export.py has
written its ``.onnx`` beside it, else on PyTorch (see ``deploy.backends.fastest_runtime``).
Preprocessing, batching and every output are the same code for all.
"""
from __future__ import annotations

import argparse
import os
from argparse import Namespace
from pathlib import Path

import numpy as np

from data.dataset import TreeSplit
from deploy.backends import BACKENDS
from deploy.model_file import describe, load_model_file, uses_tta_thresholds
from evaluation.evaluate import evaluate_split, predict_files
from evaluation.reports import coloured_table, write_file_predictions
from evaluation.thresholds import resolve_thresholds, tune_thresholds, write_thresholds
from training.rundir import RunDir, add_run_arguments, find_checkpoint
from utils.cli import run_cli
from utils.errors import EXIT_OK
from utils.log import create_logger
from utils.runtime import keep_freed_memory, select_device


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser, fork_alias=True)
    parser.add_argument("--data-path", type=Path, help="prepared tree (default: the checkpoint's DATA.DATA_PATH)")
    parser.add_argument("--split", default="test", help="split folder of the tree to evaluate (default: test)")
    parser.add_argument("--images", nargs="+", metavar="PATH", help="image files, folders or globs: predict only")
    parser.add_argument("--thresholds", type=Path, metavar="FILE", help="thresholds JSON {class: value}")
    parser.add_argument("--tune-thresholds", action="store_true",
                        help="also write per-class F1-optimal thresholds of this labelled split")
    parser.add_argument("--tta", action="store_true",
                        help="average the logits over the image and its flips (with the run's thresholds_tta.json)")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: the checkpoint's)")
    parser.add_argument("--num-workers", type=int, help="loader processes (default: the checkpoint's)")
    parser.add_argument("--output", type=Path, help="folder for the results (default: in the run dir)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="auto (default: on the CPU, an .onnx, or export.py's .onnx beside the checkpoint, on "
                             "OpenVINO for a transformer or an INT8 file checked on it, else on ONNX Runtime; else "
                             "PyTorch), "
                             "torch, onnx (ONNX Runtime on the CPU) or openvino (OpenVINO on the CPU)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.images and args.tune_thresholds:
        raise ValueError("--tune-thresholds needs a labelled split, not --images")
    device = select_device(args.device)
    keep_freed_memory()
    path = find_checkpoint(args)
    run = RunDir.of_checkpoint(path)
    results = args.output or (run.predictions if args.images else run.split_results(args.split))
    logger = create_logger(results, name="test")
    predictor = load_model_file(path, args.backend, device, logger)
    logger.info(describe(predictor, path, args.tta))
    thresholds = resolve_thresholds(args.thresholds, run, predictor, logger, uses_tta_thresholds(predictor, args.tta))
    info = predictor.info
    batch_size = args.batch_size or info.batch_size
    workers = args.num_workers if args.num_workers is not None else min(info.num_workers, os.cpu_count() or 1)
    if args.images:
        frame = predict_files(predictor, args.images, thresholds, batch_size, workers, logger, args.tta)
        write_file_predictions(frame, thresholds, results)
    else:
        split_dir = TreeSplit(args.data_path or Path(info.data_path), args.split, info.fold)
        result = evaluate_split(predictor, split_dir, thresholds, batch_size, workers, args.tta)
        logger.info(f"{len(result.names)} images in {split_dir}")
        meta = dict(checkpoint=str(path), backend=predictor.backend, split_dir=str(split_dir),
                    num_images=len(result.names), tta=args.tta)
        result.write(results, thresholds, meta)
        logger.info(f"{args.split} split, thresholds {np.round(thresholds, 4).tolist()}:\n"
                    f"{coloured_table(result.table)}")
        if args.tune_thresholds:
            if args.split == "test":
                logger.warning("tuning thresholds on the test split: report test metrics with validation thresholds")
            tune_file = (args.output / f"thresholds_{args.split}.json" if args.output
                         else run.split_thresholds(args.split))
            write_thresholds(tune_thresholds(result.targets, result.probs), tune_file)
            logger.info(f"wrote per-class F1-optimal thresholds of the {args.split} split to {tune_file} "
                        f"(use with --thresholds on another split)")
    logger.info(f"results in {results}")
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
