"""A web page on localhost that predicts and explains leaf photos: drop photos, read labels, bars and Grad-CAM.

    python app.py --cfg configs/demo_cpu.yaml                  # the run's ckpt_best.pth, http://127.0.0.1:7860
    python app.py --checkpoint RUN/ckpt_best.onnx --port 8080  # an export.py file (no Grad-CAM)
    python app.py --checkpoint RUN-cv/ensemble.json            # an ensemble: its bars, one member's Grad-CAM

A checkpoint runs on PyTorch (Grad-CAM of the predicted classes); an ``.onnx`` on ONNX Runtime;
``--backend onnx|openvino`` runs either on that CPU runtime (a checkpoint exported in memory, no Grad-CAM).
Thresholds come from ``--thresholds FILE``, else the run's thresholds.json, else the model file's,
as in test.py. Uploads are bounded (``--max-file-mb``, ``--max-megapixels``, ``--max-files``), removed
``--upload-max-age`` seconds after they arrive, and requests wait in a bounded queue (``--queue-size``,
``--concurrency``). Everything the app writes (its log, example leaves, uploads) stays in one temporary
folder, removed when it stops; only the uploads are served.

A busy port is one line and exit 1 before the model is loaded; so is a model that computes NaN or
infinity (checked on an example leaf before serving). Stopped by Ctrl-C or SIGTERM, the app exits 0:
serving until stopped is its job done.
"""
from __future__ import annotations

import argparse
import errno
import math
import os
import signal
import socket
import sys
import tempfile
from argparse import Namespace
from pathlib import Path

from data.images import MAX_PIXELS
from deploy.backends import BACKENDS, is_onnx_file
from deploy.model_file import load_model_file
from deploy.uploads import UploadLimits
from evaluation.thresholds import resolve_thresholds
from training.rundir import RunDir, add_run_arguments, find_checkpoint
from utils.cli import run_cli
from utils.errors import EXIT_OK, RunError
from utils.log import create_logger
from utils.runtime import select_device


def parse_args(argv: list[str] | None = None) -> Namespace:
    defaults = UploadLimits()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--thresholds", type=Path, metavar="FILE", help="thresholds JSON (default: the run's)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="auto (default: a checkpoint on PyTorch, with Grad-CAM; an .onnx as test.py's auto "
                             "runs it), "
                             "torch, onnx (ONNX Runtime) or openvino (OpenVINO)")
    parser.add_argument("--max-file-mb", type=float, default=defaults.max_bytes / 2**20, help="largest upload")
    parser.add_argument("--max-megapixels", type=float, default=defaults.max_pixels / 1e6,
                        help=f"largest image in megapixels, read from its header (at most {MAX_PIXELS / 1e6:g})")
    parser.add_argument("--max-files", type=int, default=defaults.max_files, help="photos per request")
    parser.add_argument("--upload-max-age", type=int, default=defaults.max_age_s, metavar="SECONDS",
                        help="uploads are removed this long after they arrive, predicted or not")
    parser.add_argument("--queue-size", type=int, default=16, help="requests waiting at most; more are refused")
    parser.add_argument("--concurrency", type=int, default=1, help="requests predicted at once")
    return parser.parse_args(argv)


def page_backend(path: Path, backend: str) -> str:
    """``backend``, but ``auto`` keeps a checkpoint (or an ensemble of them) on PyTorch, for Grad-CAM."""
    return "torch" if backend == "auto" and not is_onnx_file(path) else backend


def upload_limits(args: Namespace) -> UploadLimits:
    """The limits of the command line; ValueError (exit 2) for values that bound nothing or exceed every tool's."""
    if not 0 < args.max_megapixels <= MAX_PIXELS / 1e6:
        raise ValueError(f"--max-megapixels {args.max_megapixels:g}: must be above 0 and at most "
                         f"{MAX_PIXELS / 1e6:g} (every tool's limit, data/images.py)")
    for option, value in (("--max-file-mb", args.max_file_mb), ("--max-files", args.max_files),
                          ("--upload-max-age", args.upload_max_age)):
        if not 0 < value < math.inf:
            raise ValueError(f"{option} {value:g}: must be a number above 0")
    return UploadLimits(int(args.max_file_mb * 2**20), int(args.max_megapixels * 1e6), max_files=args.max_files,
                        max_age_s=args.upload_max_age)


def check_port(host: str, port: int) -> None:
    """Bind ``host:port`` as the server will (SO_REUSEADDR), before the slow model loading: a port in use is a
    RunError (exit 1), an address this machine cannot listen on a ValueError (exit 2)."""
    address = f"{host}:{port}"
    if not 0 < port < 65536:
        raise ValueError(f"{address}: not a port (1 to 65535)")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host.strip("[]"), port))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise RunError(f"{address}: the port is in use by another program (another app.py?); "
                           "stop it or give --port N") from None
        raise ValueError(f"{address}: cannot listen there ({error.strerror or error})") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limits = upload_limits(args)
    check_port(args.host, args.port)
    path = find_checkpoint(args)
    # SIGTERM unwinds like Ctrl-C, so the temporary folder below is removed either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_OK))
    with tempfile.TemporaryDirectory(prefix="leaf_app_") as workdir:
        work = Path(workdir)
        private = work / "private"  # the log and the example leaves: never served (only uploads are)
        os.environ["GRADIO_TEMP_DIR"] = str(work / "uploads")  # read when gradio is imported, just below
        from deploy.web import LeafPage, build_blocks, neutral_photo, serve, write_example_leaves

        logger = create_logger(private, name="app")
        backend = page_backend(path, args.backend)
        predictor = load_model_file(path, backend, select_device(args.device), logger)
        thresholds = resolve_thresholds(args.thresholds, RunDir.of_checkpoint(path), predictor, logger)
        page = LeafPage.serving(predictor, thresholds, limits)
        examples = write_example_leaves(predictor.info.data_path, private / "examples")
        page.check(examples[0] if examples else neutral_photo(private))
        blocks = build_blocks(page, examples, "Leaf disease check")
        logger.info(f"serving {path} ({page.description}) "
                    f"at http://{args.host}:{args.port}")
        serve(blocks, args.host, args.port, limits, [private], args.queue_size, args.concurrency)
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
