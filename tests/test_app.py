"""app.py in a real browser (Playwright + Debian's Chromium), and the upload checks behind it.

The page must show, for a photo, exactly test.py's labels and probabilities, Grad-CAM overlays, a
CSV; refuse bad files with a clear line while the server keeps serving; load nothing from outside
127.0.0.1; and leave nothing behind outside its temporary folder.
"""
from __future__ import annotations

import io
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from data.images import load_image
from data.labels import CLASSES
from deploy.backends import load_predictor
from deploy.uploads import UploadError, UploadLimits, check_upload
from ensemble import Ensemble, EnsemblePredictor
from helpers import ROOT, load_script, make_tree, tiny_runs
from process.leaves import render_leaf

# The first test of a selection waits for training, the server (START_SECONDS) and Chromium; uploads wait 120 s each.
pytestmark = pytest.mark.timeout(900)

test_script = load_script("test.py")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
LIMITS = UploadLimits(max_bytes=2**20, max_pixels=4_000_000)  # what the server below is started with
START_SECONDS = 240  # torch + gradio imports on 2 busy cores


# ---------------------------------------------------------------------------------------------
# Files a user might drop
# ---------------------------------------------------------------------------------------------


def scab_rust_leaf() -> Image.Image:
    return Image.fromarray(render_leaf("scab rust", np.random.default_rng(7), (360, 240)))


@pytest.fixture(scope="session")
def uploads(tmp_path_factory) -> dict[str, Path]:
    """Good leaves, and every kind of bad file the page must explain."""
    folder = tmp_path_factory.mktemp("uploads")
    leaf = scab_rust_leaf()
    files = {name: folder / name for name in (
        "leaf.jpg", "leaf2.png", "text.jpg", "truncated.jpg", "bomb.png", "one_pixel.png", "cmyk.jpg",
        "gray16.png", "huge.jpg")}
    leaf.save(files["leaf.jpg"], quality=92)
    Image.fromarray(render_leaf("healthy", np.random.default_rng(8), (200, 300))).save(files["leaf2.png"])
    files["text.jpg"].write_text("this is a text file, not a photo\n")
    files["truncated.jpg"].write_bytes(files["leaf.jpg"].read_bytes()[:4000])
    Image.new("1", (2500, 2000)).save(files["bomb.png"])  # 5 MP declared by a file of a few kB
    Image.new("RGB", (1, 1), (40, 140, 40)).save(files["one_pixel.png"])
    leaf.convert("CMYK").save(files["cmyk.jpg"], quality=92)
    Image.fromarray(np.asarray(leaf.convert("L"), dtype=np.uint16) * 257).save(files["gray16.png"])
    files["huge.jpg"].write_bytes(files["leaf.jpg"].read_bytes() + os.urandom(LIMITS.max_bytes))
    return files


REFUSALS = {
    "text.jpg": "not a JPEG, PNG, WebP, BMP or TIFF image",
    "truncated.jpg": "truncated image",
    "bomb.png": "2500 x 2000 pixels is over the limit of 4 megapixels",
    "one_pixel.png": "1 x 1 pixels is too small",
}
CONVERTED = {"cmyk.jpg": "CMYK converted to RGB", "gray16.png": "16-bit greyscale scaled to 8 bits"}


def test_upload_checks_explain_each_refusal(uploads):
    for name, message in REFUSALS.items():
        if name == "truncated.jpg":  # its header is fine: decoding fails later, in the loader
            assert check_upload(uploads[name], LIMITS) == ""
            continue
        with pytest.raises(UploadError, match=message):
            check_upload(uploads[name], LIMITS)
    with pytest.raises(UploadError, match="MB is over the 1 MB limit"):
        check_upload(uploads["huge.jpg"], LIMITS)
    for name, note in CONVERTED.items():
        assert check_upload(uploads[name], LIMITS) == note


def test_16_bit_greyscale_is_scaled_not_clipped(uploads):
    """Pillow's own convert('RGB') clips 16-bit values at 255: the leaf would turn white."""
    expected = np.asarray(scab_rust_leaf().convert("L"), dtype=np.int16)
    pixels = np.asarray(load_image(uploads["gray16.png"]), dtype=np.int16)
    assert np.abs(pixels[..., 0] - expected).max() <= 1


@pytest.fixture(scope="session")
def app_run(tmp_path_factory) -> Path:
    """A tiny Swin trained a few steps, saved like main.py's best checkpoint (with thresholds)."""
    tree = make_tree(tmp_path_factory.mktemp("app_tree"), {"train": 24})
    thresholds = [0.3, 0.35, 0.4, 0.3, 0.35, 0.4]
    return tiny_runs(tmp_path_factory.mktemp("app_output"), tree, {"app": ((), 10)}, thresholds)["app"]


@pytest.mark.slow
def test_page_on_the_onnx_backend_predicts_without_cams_and_escapes_names(app_run, uploads, tmp_path):
    """An .onnx serves the same labels (no Grad-CAM); an upload's name is shown as text, never as markup."""
    from deploy.web import LeafPage

    logger = logging.getLogger("test_app")
    hostile = tmp_path / "<img src=x onerror=alert(1)>.jpg"
    hostile.write_bytes(uploads["leaf.jpg"].read_bytes())
    files = [str(uploads["leaf.jpg"]), str(hostile), str(uploads["text.jpg"])]
    pages = {backend: LeafPage.serving(load_predictor(app_run / "ckpt_best.pth", backend, torch.device("cpu"), logger),
                                       np.full(len(CLASSES), 0.4), LIMITS, tmp_path / backend)
             for backend in ("torch", "onnx")}
    (torch_html, torch_csv), (onnx_html, onnx_csv) = (page.predict(files) for page in pages.values())
    assert "leaf-cam" in torch_html and "leaf-cam" not in onnx_html
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in onnx_html
    assert "<img src=x" not in onnx_html and REFUSALS["text.jpg"] in onnx_html
    # keep_default_na=False: an empty "predicted" (no label over its threshold) stays "", not NaN
    torch_frame, onnx_frame = (pd.read_csv(csv, keep_default_na=False) for csv in (torch_csv, onnx_csv))
    assert Path(onnx_csv).is_relative_to(tmp_path / "onnx") and len(onnx_frame) == 2
    assert list(onnx_frame.columns) == list(torch_frame.columns) == ["image", *CLASSES, "predicted"]
    assert onnx_frame["predicted"].tolist() == torch_frame["predicted"].tolist()
    np.testing.assert_allclose(onnx_frame[list(CLASSES)], torch_frame[list(CLASSES)], atol=1e-4)


@pytest.mark.slow
def test_page_on_an_ensemble_shows_its_mean_probabilities_and_one_named_members_cams(app_run, uploads, tmp_path):
    """Bars of the ensemble (the mean of its members' probabilities, as test.py computes them), Grad-CAM of its
    first member, and the page says which member that is."""
    from deploy.web import LeafPage, build_blocks

    logger = logging.getLogger("test_app")
    tree = make_tree(tmp_path / "tree", {"train": 16}, seed=3)
    other = tiny_runs(tmp_path / "other", tree, {"other": ((), 4)}, None)["other"]
    members = [app_run / "ckpt_best.pth", other / "ckpt_best.pth"]
    path = tmp_path / "ensemble.json"
    Ensemble(path, tuple(members), (1.0, 1.0), False, np.full(len(CLASSES), 0.4), "hand-made").write()
    page = LeafPage.serving(EnsemblePredictor.load(path, "torch", torch.device("cpu"), logger),
                            np.full(len(CLASSES), 0.4), LIMITS, tmp_path / "ensemble")
    assert page.cam is not None and page.cam_model.path.resolve() == members[0].resolve()
    assert page.cam_source.startswith("member 1 of 2 (app/ckpt_best.pth")
    files = [str(uploads["leaf.jpg"])]
    html_text, csv = page.predict(files)
    assert "leaf-card" in html_text and "Not predicted" not in html_text
    singles = []
    for member in members:
        single = LeafPage.serving(load_predictor(member, "torch", torch.device("cpu"), logger),
                                  np.full(len(CLASSES), 0.4), LIMITS, tmp_path / member.parent.name)
        singles.append(pd.read_csv(single.predict(files)[1])[list(CLASSES)].to_numpy())
    ensemble = pd.read_csv(csv)[list(CLASSES)].to_numpy()
    np.testing.assert_allclose(ensemble, np.mean(singles, axis=0), atol=1e-6)
    blocks = build_blocks(page, [], "Leaf disease check")
    assert "Grad-CAM of the predicted classes by member 1 of 2" in str(blocks.config)


# ---------------------------------------------------------------------------------------------
# The server and the browser
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``python app.py`` in a folder of its own, with its own TMPDIR and HOME to see what it writes.

    Matplotlib's per-user font cache (made once per user by any matplotlib program) goes to a
    folder of its own, so that HOME shows what the app itself writes.
    """

    def __init__(self, checkpoint: Path, root: Path):
        self.cwd, self.tmp, self.home = root / "cwd", root / "tmp", root / "home"
        for folder in (self.cwd, self.tmp, self.home):
            folder.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "app.log"
        env = {**os.environ, "TMPDIR": str(self.tmp), "HOME": str(self.home), "PYTHONPATH": str(ROOT),
               "MPLCONFIGDIR": str(root / "matplotlib")}
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "app.py"), "--checkpoint", str(checkpoint), "--port", str(self.port),
                 "--max-file-mb", "1", "--max-megapixels", "4"], cwd=self.cwd, env=env, stdout=log,
                stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.time() + START_SECONDS
        while time.time() < deadline:
            assert self.process.poll() is None, f"app.py exited:\n{self.log.read_text()}"
            try:
                urllib.request.urlopen(self.url, timeout=5)
                return
            except OSError:
                time.sleep(1)
        raise AssertionError(f"app.py did not answer within {START_SECONDS} s:\n{self.log.read_text()}")

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        return self.process.returncode


@pytest.fixture(scope="session")
def server(app_run, tmp_path_factory):
    server = Server(app_run / "ckpt_best.pth", tmp_path_factory.mktemp("server"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def page(server):
    """One Chromium page on the app; every URL it requests is kept in ``page.requested``."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.requested = []
        page.on("request", lambda request: page.requested.append(request.url))
        page.goto(server.url)
        page.wait_for_selector("input[type=file]", state="attached")
        yield page
        browser.close()


def upload(page, *files: Path) -> None:
    """Clear the upload box, drop ``files``, and wait until every one of them has its card."""
    clear = page.get_by_role("button", name="Clear")
    if clear.count():
        clear.first.click()
        page.wait_for_selector(".leaf-card", state="detached")
    page.locator("input[type=file]").first.set_input_files([str(f) for f in files])
    for file in files:
        page.wait_for_selector(f".leaf-card[data-name='{file.name}']", timeout=120_000)


def shown(page, name: str) -> dict:
    """What the page shows for one file: labels, classes over their threshold, per-class probability text,
    CAM pictures, message."""
    card = page.locator(f".leaf-card[data-name='{name}']")
    return {
        "labels": card.locator(".leaf-label").all_inner_texts(),
        "passed": [row.get_attribute("data-class") for row in card.locator("tr.passed[data-class]").all()],
        "probs": {row.get_attribute("data-class"): float(row.locator(".prob").inner_text())
                  for row in card.locator("tr[data-class]").all()},
        "cams": card.locator("img.leaf-cam").evaluate_all("imgs => imgs.map(i => i.naturalWidth)"),
        "error": " ".join(card.locator(".leaf-error").all_inner_texts()),
        "note": " ".join(card.locator(".leaf-note").all_inner_texts()),
    }


@pytest.mark.browser
def test_page_shows_test_py_labels_probabilities_and_cams(page, app_run, uploads, tmp_path):
    upload(page, uploads["leaf.jpg"])
    seen = shown(page, "leaf.jpg")
    out = tmp_path / "predict"
    assert test_script.main(["--checkpoint", str(app_run / "ckpt_best.pth"), "--images", str(uploads["leaf.jpg"]),
                             "--output", str(out), "--device", "cpu"]) == 0
    predictions = pd.read_csv(out / "predictions.csv")
    submission = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert list(seen["probs"]) == list(CLASSES)
    np.testing.assert_allclose(list(seen["probs"].values()), predictions.loc[0, list(CLASSES)].to_numpy(float),
                               atol=5.1e-5, rtol=0)  # shown with 4 decimals
    assert seen["labels"] == submission.loc[0, "labels"].split()
    assert len(seen["cams"]) == len(seen["labels"]) and all(width > 0 for width in seen["cams"])


@pytest.mark.browser
def test_csv_download_holds_the_shown_predictions(page, uploads):
    upload(page, uploads["leaf.jpg"], uploads["leaf2.png"])
    link = page.locator("a[download='predictions.csv']")
    response = page.request.get(link.first.get_attribute("href"))
    assert response.ok
    frame = pd.read_csv(io.StringIO(response.text()), keep_default_na=False)
    assert list(frame.columns) == ["image", *CLASSES, "predicted"]  # test.py's predictions.csv
    assert frame["image"].tolist() == ["leaf.jpg", "leaf2.png"]
    for row in frame.itertuples():
        seen = shown(page, row.image)
        assert row.predicted.split() == seen["passed"]
        np.testing.assert_allclose([getattr(row, c) for c in CLASSES], list(seen["probs"].values()), atol=5.1e-5)


@pytest.mark.browser
def test_a_text_file_named_jpg_is_refused_then_a_photo_works(page, server, uploads):
    upload(page, uploads["text.jpg"])
    assert REFUSALS["text.jpg"] in shown(page, "text.jpg")["error"]
    upload(page, uploads["leaf.jpg"])
    assert shown(page, "leaf.jpg")["labels"] and server.process.poll() is None


@pytest.mark.browser
def test_every_bad_file_gets_its_message_and_the_others_go_on(page, server, uploads):
    names = [*REFUSALS, *CONVERTED, "leaf.jpg"]
    upload(page, *(uploads[name] for name in names))
    for name, message in REFUSALS.items():
        assert message in shown(page, name)["error"], name
    for name, note in CONVERTED.items():
        seen = shown(page, name)
        assert note in seen["note"] and seen["labels"] and not seen["error"], name
    assert shown(page, "leaf.jpg")["labels"] and server.process.poll() is None


@pytest.mark.browser
def test_an_oversized_file_is_refused_in_the_page(page, server, uploads):
    page.get_by_role("button", name="Clear").first.click()
    page.locator("input[type=file]").first.set_input_files(str(uploads["huge.jpg"]))
    page.get_by_text("exceed the maximum allowed size").first.wait_for(timeout=60_000)
    page.reload()
    page.wait_for_selector("input[type=file]", state="attached")
    upload(page, uploads["leaf.jpg"])
    assert shown(page, "leaf.jpg")["labels"] and server.process.poll() is None


@pytest.mark.browser
def test_an_example_leaf_is_one_click_away(page):
    page.get_by_role("button", name="Clear").first.click()
    page.get_by_text("rust.jpg", exact=True).first.click()  # a synthetic leaf named after its true label
    page.wait_for_selector(".leaf-card[data-name='rust.jpg']", timeout=120_000)
    assert shown(page, "rust.jpg")["labels"]


@pytest.mark.browser
def test_no_request_leaves_the_machine(page):
    assert page.requested and all(url.startswith(("http://127.0.0.1:", "data:", "blob:")) for url in page.requested), \
        [url for url in page.requested if not url.startswith("http://127.0.0.1:")]


@pytest.mark.browser
def test_stopping_leaves_nothing_behind(page, server, app_run):
    """After SIGTERM: exit 0, the temporary folder gone, nothing in the working folder, HOME or the run."""
    before = sorted(p.name for p in app_run.iterdir())
    assert server.stop() == 0
    assert sorted(p.name for p in app_run.iterdir()) == before
    for folder in (server.cwd, server.tmp, server.home):
        assert not any(folder.rglob("*")), (folder, list(folder.rglob("*")))
