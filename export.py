"""Export a trained checkpoint to ONNX: one file that is enough to predict (class names, thresholds, preprocessing).

    python export.py --cfg configs/demo_cpu.yaml                      # the run's ckpt_best.pth -> ckpt_best.onnx
    python export.py --checkpoint RUN/ckpt_best.pth --output model.onnx

The model (dynamic batch, fixed height and width, output ``logits``: sigmoid gives the
probabilities) is checked with ``onnx.checker`` and compared with PyTorch in ONNX Runtime on
synthetic leaves put through the model's own transform; the largest probability difference is
printed and must stay <= 1e-4, else nothing is written (exit 1). Its metadata holds the classes,
the thresholds (``--thresholds FILE``, else the run's thresholds.json, else the checkpoint's, as
in test.py), the input size, resize mode, interpolation, mean and std. Run it with
``test.py --checkpoint FILE.onnx`` or ``app.py --checkpoint FILE.onnx``.
"""
from __future__ import annotations

import argparse
import dataclasses
from argparse import Namespace
from pathlib import Path

import onnx
import torch

from cli import EXIT_FAILED, EXIT_OK, add_run_arguments, find_checkpoint, run_cli
from deploy.export import PARITY_TOLERANCE, ParityError, export_checked
from inference import Predictor
from log import create_logger
from rundir import RunDir, onnx_file
from thresholds import resolve_thresholds
from utils import atomic_write_bytes


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--format", default="onnx", choices=("onnx",), help="file format (only onnx)")
    parser.add_argument("--output", type=Path, help="the file to write (default: the checkpoint's path as .onnx)")
    parser.add_argument("--thresholds", type=Path, metavar="FILE", help="thresholds JSON to store (default: the run's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = find_checkpoint(args)
    output = args.output or onnx_file(path)
    logger = create_logger(output.parent, name="export")
    predictor = Predictor.from_checkpoint(path, torch.device("cpu"))
    thresholds = resolve_thresholds(args.thresholds, RunDir.of_checkpoint(path), predictor, logger)
    info = dataclasses.replace(predictor.info, thresholds=tuple(map(float, thresholds)))
    logger.info(f"exporting {info.describe()} from {path}")
    try:
        data, parity = export_checked(predictor, info)
    except ParityError as err:
        logger.error(f"{err}: nothing written")
        return EXIT_FAILED
    atomic_write_bytes(data, output)
    opset = next(o.version for o in onnx.load_from_string(data).opset_import if o.domain in ("", "ai.onnx"))
    logger.info(f"onnx.checker: ok (opset {opset}); max |prob difference| ONNX Runtime vs PyTorch on synthetic "
                f"images: {parity:.2e} (tolerance {PARITY_TOLERANCE:.0e})")
    logger.info(f"wrote {output} ({len(data) / 1e6:.1f} MB)")
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
