"""Export a trained checkpoint to ONNX: one file that is enough to predict (class names, thresholds, preprocessing).

    python export.py --cfg configs/demo_cpu.yaml                      # the run's ckpt_best.pth -> ckpt_best.onnx
    python export.py --checkpoint RUN/ckpt_best.pth --output model.onnx
    python export.py --checkpoint RUN-cv/ensemble.json                  # every member in one graph

The model (dynamic batch, fixed height and width, output ``logits``: sigmoid gives the
probabilities) is checked with ``onnx.checker`` and compared with PyTorch in ONNX Runtime on
synthetic leaves put through the model's own transform; the largest probability difference is
printed and must stay <= 1e-4, else nothing is written (exit 1). Its metadata holds the classes,
the thresholds (``--thresholds FILE``, else the run's thresholds.json, else the checkpoint's, as
in test.py), the input size, resize mode, interpolation, mean and std. Run it with
``test.py --checkpoint FILE.onnx`` or ``app.py --checkpoint FILE.onnx``.

An ensemble file (scripts/cv.py's ``ensemble.json``) becomes one graph holding every member
(``models.ensemble``): the input is prepared as for its largest member, the others resize it inside
the graph; each member's TTA flips run inside when the file asks for TTA (so do not add ``--tta``);
the output is the logit of the members' weighted mean probability, and the thresholds are the file's.
Parity is checked against the same ensemble in PyTorch; when members differ in input size, how far
the in-graph resize moves the probabilities from test.py's per-member preprocessing is printed too.
"""
from __future__ import annotations

import argparse
import dataclasses
from argparse import Namespace
from pathlib import Path

import onnx
import torch

from cli import EXIT_FAILED, EXIT_OK, add_run_arguments, find_checkpoint, run_cli
from deploy.export import PARITY_TOLERANCE, ParityError, export_checked, member_preprocessing_difference
from ensemble import Ensemble, EnsemblePredictor, ensemble_module, is_ensemble_file
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
    if is_ensemble_file(path):
        ensemble = Ensemble.read(path)
        members = [Predictor.from_checkpoint(m, torch.device("cpu")) for m in ensemble.members]
        predictor = EnsemblePredictor(ensemble, members)
        model, info = ensemble_module(ensemble, members)
    else:
        predictor = Predictor.from_checkpoint(path, torch.device("cpu"))
        model, info = predictor.model, predictor.info
    thresholds = resolve_thresholds(args.thresholds, RunDir.of_checkpoint(path), predictor, logger)
    info = dataclasses.replace(info, thresholds=tuple(map(float, thresholds)))
    logger.info(f"exporting {info.describe()} from {path}")
    if is_ensemble_file(path) and len({m.info.preprocessing for m in members}) > 1:
        moved = member_preprocessing_difference(model, info, members)
        logger.info(f"members differ in preprocessing: the in-graph resize moves probabilities by at most "
                    f"{moved:.2e} from test.py's per-member preprocessing (synthetic photos)")
    try:
        data, parity = export_checked(model, info, path)
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
