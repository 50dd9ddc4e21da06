"""Per-image time of prepare.py on full-size 4000x2672 JPEGs: its decode against the plain path, and the
cost of the duplicate finder.

    python bench/prepare_speed.py [--num 6] [--repeat 3] [--size 384]

Every path runs interleaved in this one process on the same files (already in the page cache), one
image at a time. Plain path: open, full decode, EXIF transpose, RGB, resize the shorter side to
``--size`` with prepare.py's filter. prepare.py's path is ``process.tree.load_resized`` (JPEG draft
decode at reduced scale, then the same filter); saving costs the same on both sides and is not timed.
Then a worker's whole job (``process.tree.process_image``: decode, resize, save the staged JPEG) with
and without the perceptual hash, and the pair search over as many random hashes as the Kaggle set
has photos. Acceptance: decode ratio >= 5, PSNR >= 32 dB, the finder at most 1.1x a worker's time per
photo; the exit status is 1 otherwise.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps
from termcolor import colored

from process.duplicates import DEFAULT_DISTANCE, HASH_BITS, close_pairs
from process.synthesize import synthesize
from process.tree import RESAMPLE, Task, load_resized, process_image, target_size
from utils.cli import run_cli

FULL_SIZE = (4000, 2672)
MIN_RATIO, MIN_PSNR, MAX_FINDER_RATIO = 5.0, 32.0, 1.1
KAGGLE_PHOTOS = 18_632


def plain_path(path: Path, shorter: int) -> Image.Image:
    """What a straightforward script does: decode everything, then resize."""
    with Image.open(path) as image:
        image.load()
        upright = ImageOps.exif_transpose(image).convert("RGB")
    return upright.resize(target_size(upright.size, shorter), RESAMPLE)


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB between two 8-bit images of one size."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def timed(function: Callable[..., Image.Image], *args: object) -> tuple[float, Image.Image]:
    """Seconds one call takes, and its result."""
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def measure(files: list[Path], shorter: int, repeat: int) -> tuple[list[float], list[float], list[float]]:
    """Interleaved per-image seconds of both paths, and the PSNR of each file's two outputs."""
    plain_times, fast_times, quality = [], [], []
    for round_ in range(repeat):
        for path in files:
            plain_seconds, plain = timed(plain_path, path, shorter)
            fast_seconds, fast = timed(load_resized, path, shorter)
            plain_times.append(plain_seconds)
            fast_times.append(fast_seconds)
            if round_ == 0:
                assert plain.size == fast.size, (path, plain.size, fast.size)
                quality.append(psnr(plain, fast))
    return plain_times, fast_times, quality


def measure_finder(files: list[Path], shorter: int, repeat: int, out: Path) -> tuple[list[float], list[float]]:
    """Interleaved per-image seconds of a prepare worker's job without and with the hash."""
    without, with_hash = [], []
    for _ in range(repeat):
        for path in files:
            for find, times in ((False, without), (True, with_hash)):
                task = Task(path.name, str(path), str(out / path.name), shorter, find)
                seconds, (_, ok, _, _) = timed(process_image, task)
                assert ok, path
                times.append(seconds)
    return without, with_hash


def time_pair_search(n: int) -> float:
    """Seconds of ``close_pairs`` over ``n`` random hashes."""
    bits = np.random.default_rng(0).integers(0, 2, (n, HASH_BITS), dtype=np.uint8)
    hashes = [row.tobytes().hex() for row in np.packbits(bits, axis=1)]
    start = time.perf_counter()
    close_pairs(hashes, DEFAULT_DISTANCE)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Time both paths on fresh full-size photos; exit 1 when the acceptance bar is missed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=6, help="full-size JPEGs to generate")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the files")
    parser.add_argument("--size", type=int, default=384, help="target shorter side")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(tmp, args.num, seed=0, size=FULL_SIZE)
        files = sorted(Path(tmp, "train_images").glob("*.jpg"))
        for path in files:  # warm the page cache so that neither side pays the disk
            path.read_bytes()
        plain_times, fast_times, quality = measure(files, args.size, args.repeat)
        without, with_hash = measure_finder(files, args.size, args.repeat, Path(tmp))
    plain_ms, fast_ms = 1000 * np.mean(plain_times), 1000 * np.mean(fast_times)
    ratio = plain_ms / fast_ms
    print(f"{len(files)} JPEGs of {FULL_SIZE[0]}x{FULL_SIZE[1]} -> shorter side {args.size}, "
          f"{args.repeat} interleaved passes, 1 process")
    print(f"  plain decode + resize : {plain_ms:7.1f} ms/image")
    print(f"  prepare.py            : {fast_ms:7.1f} ms/image")
    print(f"  speed-up              : {ratio:7.2f}x   (need >= {MIN_RATIO:g})")
    print(f"  PSNR vs plain         : mean {np.mean(quality):.2f} dB, min {np.min(quality):.2f} dB"
          f"   (need >= {MIN_PSNR:g})")
    without_ms, hashed_ms = 1000 * np.mean(without), 1000 * np.mean(with_hash)
    finder = hashed_ms / without_ms
    print(f"  worker, no finder     : {without_ms:7.1f} ms/image   (decode, resize, save)")
    print(f"  worker, with finder   : {hashed_ms:7.1f} ms/image   ({finder:.3f}x, need <= {MAX_FINDER_RATIO:g})")
    for n in (KAGGLE_PHOTOS // 4, KAGGLE_PHOTOS):
        print(f"  pair search, {n:6d} hashes: {time_pair_search(n):6.2f} s   (grows as N^2)")
    passed = ratio >= MIN_RATIO and min(quality) >= MIN_PSNR and finder <= MAX_FINDER_RATIO
    print(colored("PASS" if passed else "FAIL", "green" if passed else "red", attrs=["bold"]))
    return 0 if passed else 1


if __name__ == "__main__":
    run_cli(main)
