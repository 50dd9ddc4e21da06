"""A web page on localhost that predicts and explains leaf photos: drop photos, read labels, bars and Grad-CAM.

    python app.py --cfg configs/demo_cpu.yaml                  # the run's ckpt_best.pth, http://127.0.0.1:7860
    python app.py --checkpoint RUN/ckpt_best.onnx --port 8080  # an export.py file (no Grad-CAM)
    python app.py --checkpoint RUN-cv/ensemble.json            # an ensemble: its bars, one member's Grad-CAM

A checkpoint runs on PyTorch (Grad-CAM of the predicted classes); an ``.onnx`` on ONNX Runtime;
``--backend onnx|openvino`` runs either on that CPU runtime (a checkpoint exported in memory, no Grad-CAM).
Thresholds come from ``--thresholds FILE``, else the run's thresholds.json, else the model file's,
as in test.py. Uploads are bounded (``--max-file-mb``, ``--max-megapixels``, ``--max-files``) and
requests wait in a bounded queue (``--queue-size``, ``--concurrency``). Everything the app writes
(uploads, example leaves, CSVs) stays in one temporary folder, removed when it stops.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from argparse import Namespace
from pathlib import Path

from cli import EXIT_OK, add_run_arguments, find_checkpoint, run_cli
from deploy.backends import BACKENDS, is_onnx_file, load_predictor
from deploy.uploads import UploadLimits
from ensemble import EnsemblePredictor, is_ensemble_file
from log import create_logger
from process.leaves import write_example_leaves
from rundir import RunDir
from runtime import select_device
from thresholds import resolve_thresholds


def parse_args(argv: list[str] | None = None) -> Namespace:
    defaults = UploadLimits()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--thresholds", type=Path, metavar="FILE", help="thresholds JSON (default: the run's)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="auto (default: a checkpoint on PyTorch, with Grad-CAM; an .onnx on ONNX Runtime), "
                             "torch, onnx (ONNX Runtime) or openvino (OpenVINO)")
    parser.add_argument("--max-file-mb", type=float, default=defaults.max_bytes / 2**20, help="largest upload")
    parser.add_argument("--max-megapixels", type=float, default=defaults.max_pixels / 1e6,
                        help="largest image (pixels declared in its header)")
    parser.add_argument("--max-files", type=int, default=defaults.max_files, help="photos per request")
    parser.add_argument("--queue-size", type=int, default=16, help="requests waiting at most; more are refused")
    parser.add_argument("--concurrency", type=int, default=1, help="requests predicted at once")
    return parser.parse_args(argv)


def page_backend(path: Path, backend: str) -> str:
    """``backend``, but ``auto`` keeps a checkpoint (or an ensemble of them) on PyTorch, for Grad-CAM."""
    return "torch" if backend == "auto" and not is_onnx_file(path) else backend


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limits = UploadLimits(int(args.max_file_mb * 2**20), int(args.max_megapixels * 1e6), max_files=args.max_files)
    path = find_checkpoint(args)
    # SIGTERM unwinds like Ctrl-C, so the temporary folder below is removed either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_OK))
    with tempfile.TemporaryDirectory(prefix="leaf_app_") as workdir:
        work = Path(workdir)
        os.environ["GRADIO_TEMP_DIR"] = str(work / "uploads")  # read when gradio is imported, just below
        from deploy.web import LeafPage, build_blocks, serve

        logger = create_logger(work, name="app")
        backend = page_backend(path, args.backend)
        if is_ensemble_file(path):
            predictor = EnsemblePredictor.load(path, backend, select_device(args.device), logger)
        else:
            predictor = load_predictor(path, backend, select_device(args.device), logger)
        thresholds = resolve_thresholds(args.thresholds, RunDir.of_checkpoint(path), predictor, logger)
        page = LeafPage.serving(predictor, thresholds, limits, work / "results")
        blocks = build_blocks(page, write_example_leaves(work / "examples"), "Leaf disease check")
        logger.info(f"serving {path} ({page.description}) "
                    f"at http://{args.host}:{args.port}")
        serve(blocks, args.host, args.port, limits, work, args.queue_size, args.concurrency)
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
