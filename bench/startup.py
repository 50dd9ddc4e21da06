"""Start-up: how long from the command to the first prediction, and where that time goes.

Each case runs in a fresh process (what a user's command pays), interleaved over ``--repeats`` so that
machine load hits every case alike; the best repeat is printed. Cases: importing test.py alone, then
``test.py --images`` on one photo from a checkpoint (PyTorch), from its ``export.py`` file (ONNX
Runtime, OpenVINO), and ``app.py`` until its page answers and until its first prediction is back
(through gradio's client, as a browser would ask). ``--repo`` times another checkout's code with the
same cases (e.g. the commit before a change), so two versions are measured side by side in one run.

    python bench/startup.py --checkpoint output/demo_cpu/default/ckpt_best.pth [--repeats 3] [--repo ../old]
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a trained ckpt_best.pth")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repo", type=Path, action="append", default=[], help="another checkout to time too")
    return parser.parse_args(argv)


def write_photo(path: Path) -> Path:
    """One full-size JPEG (Kaggle's 4000 x 2672): decoding it is part of the first prediction."""
    rng = np.random.default_rng(0)
    field = Image.fromarray(rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)).resize((4000, 2672), Image.BICUBIC)
    field.save(path, quality=90)
    return path


def run(command: list[str], repo: Path) -> float:
    """Seconds of ``command`` run to its end in ``repo`` with ``repo``'s modules first on the path."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    start = time.perf_counter()
    subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def app_times(repo: Path, checkpoint: Path, photo: Path) -> tuple[float, float]:
    """(seconds until the page answers, seconds until the first prediction is back) of a fresh app.py."""
    from gradio_client import Client, handle_file

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "PYTHONPATH": str(repo)}
    start = time.perf_counter()
    app = subprocess.Popen([sys.executable, "app.py", "--checkpoint", str(checkpoint), "--port", str(port)],
                           cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if app.poll() is not None:
                raise RuntimeError(f"app.py exited with code {app.returncode} before serving")
            try:
                urllib.request.urlopen(url, timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        page = time.perf_counter() - start
        Client(url, verbose=False).predict([handle_file(str(photo))], api_name="/predict")
        return page, time.perf_counter() - start
    finally:
        app.terminate()
        app.wait(timeout=60)


def cases(repo: Path, checkpoint: Path, exported: Path, photo: Path) -> dict[str, object]:
    """name -> a callable returning seconds (or a tuple of them)."""
    test = [sys.executable, "test.py", "--images", str(photo), "--output"]
    return {
        "import test.py": lambda: run([sys.executable, "-c", "import test"], repo),
        "test.py, checkpoint (torch)": lambda: run([*test, tempfile.mkdtemp(), "--checkpoint", str(checkpoint),
                                                    "--backend", "torch"], repo),
        "test.py, .onnx (onnxruntime)": lambda: run([*test, tempfile.mkdtemp(), "--checkpoint", str(exported)], repo),
        "test.py, .onnx (openvino)": lambda: run([*test, tempfile.mkdtemp(), "--checkpoint", str(exported),
                                                  "--backend", "openvino"], repo),
        "app.py, checkpoint": lambda: app_times(repo, checkpoint, photo),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    repos = [REPO, *[path.resolve() for path in args.repo]]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        photo = write_photo(folder / "leaf.jpg")
        exported = folder / "model.onnx"
        subprocess.run([sys.executable, "export.py", "--checkpoint", str(args.checkpoint.resolve()), "--output",
                        str(exported)], cwd=REPO, check=True, capture_output=True)
        best: dict[tuple[str, str], list] = {}
        for _ in range(args.repeats):
            for repo in repos:
                for name, case in cases(repo, args.checkpoint.resolve(), exported, photo).items():
                    best.setdefault((str(repo), name), []).append(case())
    print(f"best of {args.repeats} interleaved repeats, seconds from the command (one full-size photo)")
    for (repo, name), times in best.items():
        if isinstance(times[0], tuple):
            page, first = min(t[0] for t in times), min(t[1] for t in times)
            print(f"{repo:32s} {name:32s} page {page:6.2f}   first prediction {first:6.2f}")
        else:
            print(f"{repo:32s} {name:32s} {min(times):6.2f}")


if __name__ == "__main__":
    main()
