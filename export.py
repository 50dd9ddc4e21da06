"""Export a trained checkpoint to ONNX: one file that is enough to predict (class names, thresholds, preprocessing).

    python export.py --cfg configs/demo_cpu.yaml                      # the run's ckpt_best.pth -> ckpt_best.onnx
    python export.py --checkpoint RUN/ckpt_best.pth --output model.onnx
    python export.py --checkpoint RUN-cv/ensemble.json                  # every member in one graph
    python export.py --cfg configs/effnet_lite0_cpu.yaml --int8         # -> ckpt_best.int8.onnx

The model (dynamic batch, fixed height and width, output ``logits``: sigmoid gives the
probabilities) is checked with ``onnx.checker`` and compared with PyTorch in ONNX Runtime on
synthetic leaves put through the model's own transform; the largest probability difference is
printed and must stay <= 1e-4 (a NaN does not), else nothing is written (exit 1). A checkpoint with
NaN or infinite weights is refused before any work (exit 2), non-finite logits on those leaves
after it (exit 1). Its metadata holds the classes, the thresholds (``--thresholds FILE``, else the
run's thresholds.json, else the checkpoint's, as in test.py), the input size, resize mode,
interpolation, mean and std, and no absolute path (an absolute data path is left out). Run it with
``test.py --checkpoint FILE.onnx`` or ``app.py --checkpoint FILE.onnx``.

An ensemble file (scripts/cv.py's ``ensemble.json``) becomes one graph holding every member
(``models.ensemble``): the input is prepared as for its largest member, the others resize it inside
the graph; each member's TTA flips run inside when the file asks for TTA (so do not add ``--tta``);
the output is the logit of the members' weighted mean probability, and the thresholds are the file's.
Parity is checked against the same ensemble in PyTorch; when members differ in input size, how far
the in-graph resize moves the probabilities from test.py's per-member preprocessing is printed too.

``--int8`` writes a statically quantised model instead (``deploy.quantize``; default output
``ckpt_best.int8.onnx``), calibrated on ``--calib-images`` leaves of the run's ``--calib-split``
through the model's own transform, with the FP32 file's metadata. Both splits are checked before
the FP32 export (a missing tree or split: exit 2). It is admitted by its decisions:
on the validation split of ``--data-path`` (default: the model's), its macro-F1 at the file's
thresholds must stay within 0.005 of the (parity-checked) FP32 model's, else nothing is written
(exit 1); the largest probability difference is printed. Thresholds re-tuned on the INT8
validation probabilities are kept in the file when they raise its macro-F1 (said in the log), and
test.py and app.py then take them before the run's thresholds.json.
"""
from __future__ import annotations

import argparse
import dataclasses
from argparse import Namespace
from pathlib import Path

import onnx
import torch

from deploy import quantize
from deploy.model_file import load_network_file, network_of
from deploy.onnx_export import PARITY_TOLERANCE, ParityError, export_checked, member_preprocessing_difference
from evaluation.thresholds import resolve_thresholds
from training.rundir import RunDir, add_run_arguments, find_checkpoint, onnx_file
from utils.cli import run_cli
from utils.errors import EXIT_FAILED, EXIT_OK
from utils.files import atomic_write_bytes
from utils.log import create_logger


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--format", default="onnx", choices=("onnx",), help="file format (only onnx)")
    parser.add_argument("--output", type=Path, help="the file to write (default: the checkpoint's path as .onnx)")
    parser.add_argument("--thresholds", type=Path, metavar="FILE", help="thresholds JSON to store (default: the run's)")
    parser.add_argument("--int8", action="store_true",
                        help="write a statically quantised INT8 model, checked by its macro-F1 on validation")
    parser.add_argument("--calib-images", type=positive_int, default=64, metavar="N",
                        help="--int8: leaves to calibrate on (default 64)")
    parser.add_argument("--calib-split", default="train", choices=("train", "val"),
                        help="--int8: the split they come from (default train; validation then stays unseen)")
    parser.add_argument("--data-path", type=Path, help="--int8: prepared tree (default: the model's DATA.DATA_PATH)")
    return parser.parse_args(argv)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def int8_file(checkpoint: Path) -> Path:
    """--int8's default output: the checkpoint's path as ``.int8.onnx``."""
    return Path(checkpoint).with_suffix(".int8.onnx")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = find_checkpoint(args)
    output = args.output or (int8_file(path) if args.int8 else onnx_file(path))
    logger = create_logger(output.parent, name="export")
    predictor = load_network_file(path, torch.device("cpu"))
    model, info, members = network_of(predictor)
    # before the FP32 work: bad input fails in seconds
    splits = quantize.int8_splits(args.data_path, args.calib_split, info) if args.int8 else None
    thresholds = resolve_thresholds(args.thresholds, RunDir.of_checkpoint(path), predictor, logger)
    info = dataclasses.replace(info, thresholds=tuple(map(float, thresholds)))
    logger.info(f"exporting {info.describe()} from {path}")
    if len({m.info.preprocessing for m in members}) > 1:
        moved = member_preprocessing_difference(model, info, members)
        logger.info(f"members differ in preprocessing: the in-graph resize moves probabilities by at most "
                    f"{moved:.2e} from test.py's per-member preprocessing (synthetic photos)")
    try:
        data, parity = export_checked(model, info, path)
    except ParityError as err:
        logger.error(f"{err}: nothing written")
        return EXIT_FAILED
    opset = next(o.version for o in onnx.load_from_string(data).opset_import if o.domain in ("", "ai.onnx"))
    logger.info(f"onnx.checker: ok (opset {opset}); max |prob difference| ONNX Runtime vs PyTorch on synthetic "
                f"images: {parity:.2e} (tolerance {PARITY_TOLERANCE:.0e})")
    if splits is not None:
        try:
            data = quantize.int8_export(data, info, path, output, splits, args.calib_images, logger)
        except quantize.DecisionError as err:
            logger.error(f"{err}: nothing written")
            return EXIT_FAILED
    atomic_write_bytes(data, output)
    logger.info(f"wrote {output} ({len(data) / 1e6:.1f} MB)")
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
