"""app.py in a real browser (Playwright + Debian's Chromium), over plain HTTP, and the upload checks behind it.

The page must show, for a photo, exactly test.py's labels and probabilities, Grad-CAM overlays, a
CSV; refuse bad files with a clear line while the server keeps serving; load nothing from outside
127.0.0.1; and leave nothing behind outside its temporary folder. The server must serve nothing but
uploads, name no server folder in a prediction, refuse other sites' pages, remove uploads after
``--upload-max-age``, never fetch a URL, and fail at once on a busy port. Every tool must apply the same
pixel and format limits (data/images.py).
"""
from __future__ import annotations

import base64
import http.server
import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from data.images import MAX_PIXELS, load_image
from data.labels import CLASSES
from deploy.backends import load_predictor
from deploy.model_file import load_model_file
from deploy.uploads import UploadError, UploadLimits, check_upload
from evaluation.ensemble_file import Ensemble
from evaluation.thresholds import write_thresholds
from helpers import ROOT, copy_runs, load_script, make_tree, snapshot, tiny_runs
from process.leaves import render_leaf
from process.tree import Task, process_image
from utils.errors import RunError

# The first test of a selection waits for training, the server (START_SECONDS) and Chromium; uploads wait 120 s each.
pytestmark = pytest.mark.timeout(900)

test_script = load_script("test.py")
visual_script = load_script("visual.py")
app_script = load_script("app.py")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
LIMITS = UploadLimits(max_bytes=2**20, max_pixels=4_000_000)  # what the server below is started with
START_SECONDS = 240  # torch + gradio imports on 2 busy cores
MAX_AGE = 8  # --upload-max-age of the server below, in seconds


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


NOT_ACCEPTED = "not an image of an accepted format: JPEG, PNG, WebP, BMP or TIFF"
REFUSALS = {
    "text.jpg": NOT_ACCEPTED,
    "truncated.jpg": "truncated image",
    "bomb.png": "over the pixel limit: 2500 x 2000 pixels, more than 4 megapixels",
    "one_pixel.png": "1 x 1 pixels is too small",
}
CONVERTED = {"cmyk.jpg": "CMYK converted to RGB", "gray16.png": "16-bit greyscale scaled to 8 bits"}


def test_upload_checks_explain_each_refusal(uploads):
    for name, message in REFUSALS.items():
        if name == "truncated.jpg":  # its header is fine: decoding fails later, in the loader
            assert check_upload(uploads[name], LIMITS) == ""
            continue
        with pytest.raises(UploadError, match=re.escape(message)):
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


def csv_of(html_text: str) -> pd.DataFrame:
    """The predictions.csv a page's results carry in their download link.

    keep_default_na=False: an empty "predicted" (no label over its threshold) stays "", not NaN."""
    [data] = re.findall(r'download="predictions.csv" href="data:text/csv;base64,([^"]+)"', html_text)
    return pd.read_csv(io.BytesIO(base64.b64decode(data)), keep_default_na=False)


SIDE = int(MAX_PIXELS**0.5) + 1  # a square just over every tool's pixel limit


@pytest.fixture(scope="session")
def beyond_limits(tmp_path_factory) -> dict[str, Path]:
    """A real EPS (Pillow would hand it to Ghostscript) and a PNG of a few kB declaring just over the pixel limit
    (under Pillow's own, so only the project's limit refuses it)."""
    folder = tmp_path_factory.mktemp("limits")
    files = {"eps": folder / "leaf.eps", "png": folder / "huge.png"}
    files["eps"].write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n"
                            "newpath 0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n")
    with Image.open(files["eps"]) as image:
        assert image.format == "EPS"
    Image.new("1", (SIDE, SIDE)).save(files["png"])
    return files


LIMIT_REFUSALS = {"eps": NOT_ACCEPTED,
                  "png": f"over the pixel limit: {SIDE} x {SIDE} pixels, more than {MAX_PIXELS / 1e6:g} megapixels"}


def logged_about(log: Path, path: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if str(path) in line]


def what_tool_says(tool: str, bad: Path, good: Path, checkpoint: Path, out: Path) -> str:
    """What ``tool`` says about ``bad``: test.py and visual.py log one line naming it (and go on), the upload check
    and prepare's worker give the reason."""
    if tool == "upload":
        with pytest.raises(UploadError) as refused:
            check_upload(bad, UploadLimits())
        return str(refused.value)
    if tool == "prepare":
        _, ok, reason, _ = process_image(Task(bad.name, str(bad), str(out / "staged.jpg"), 32))
        assert not ok and not (out / "staged.jpg").exists()
        return reason
    script, images = (test_script, [bad, good]) if tool == "test.py" else (visual_script, [bad])
    args = ["--checkpoint", str(checkpoint), "--images", *map(str, images), "--output", str(out), "--device", "cpu"]
    assert script.main(args) == 0
    [line] = logged_about(out / "log.txt", bad)
    assert f"{bad}: skipped (" in line
    return line


@pytest.mark.parametrize("kind", LIMIT_REFUSALS)
@pytest.mark.parametrize("tool", ["test.py", "visual.py", "upload", "prepare"])
def test_every_tool_refuses_the_same_formats_and_pixels(tool, kind, beyond_limits, app_run, uploads, tmp_path):
    """One home (data/images.py): before, test.py and visual.py decoded a 108 MP PNG, and only the page kept an
    EPS from Ghostscript."""
    said = what_tool_says(tool, beyond_limits[kind], uploads["leaf.jpg"], app_run / "ckpt_best.pth", tmp_path)
    assert LIMIT_REFUSALS[kind] in said


@pytest.mark.parametrize("option", [["--max-megapixels", str(MAX_PIXELS / 1e6 + 1)], ["--max-megapixels", "0"],
                                    ["--max-file-mb", "nan"], ["--max-file-mb", "inf"], ["--max-files", "0"],
                                    ["--upload-max-age", "0"]])
def test_app_limits_only_bound_within_every_tools(option):
    """The page may lower the pixel limit, never raise it past what test.py decodes; zero bounds nothing."""
    with pytest.raises(ValueError, match=f"^{option[0]} "):
        app_script.upload_limits(app_script.parse_args(["--checkpoint", "x.pth", *option]))


def test_example_leaves_are_the_first_test_leaf_of_each_class_named_after_its_labels(tmp_path):
    from deploy.web import write_example_leaves

    tree = make_tree(tmp_path / "tree", {"test": 8})
    before = snapshot(tree)
    examples = write_example_leaves(tree, tmp_path / "examples")
    assert [p.name for p in examples] == [f"{c}.jpg" for c in CLASSES]  # make_tree starts with the six singles
    assert examples[CLASSES.index("rust")].read_bytes() == (tree / "test" / "000010" / "test0002.jpg").read_bytes()
    assert snapshot(tree) == before
    assert write_example_leaves(tmp_path / "no_tree", tmp_path / "none") == [] and not (tmp_path / "none").exists()


@pytest.fixture(scope="session")
def app_run(tmp_path_factory, tiny_swin_runs) -> Path:
    """A copy of the shared tiny Swin (it tells the spots apart) with thresholds.json of its own; its tree's test
    split gives the page its example leaves."""
    run = copy_runs({"app": tiny_swin_runs["swin"]}, tmp_path_factory.mktemp("app_output"))["app"]
    write_thresholds([0.3, 0.35, 0.4, 0.3, 0.35, 0.4], run / "thresholds.json")
    return run


@pytest.mark.slow
def test_page_on_the_onnx_backend_predicts_without_cams_and_escapes_names(app_run, uploads, tmp_path):
    """An .onnx serves the same labels (no Grad-CAM); an upload's name is shown as text, never as markup."""
    from deploy.web import LeafPage

    logger = logging.getLogger("test_app")
    hostile = tmp_path / "<img src=x onerror=alert(1)>.jpg"
    hostile.write_bytes(uploads["leaf.jpg"].read_bytes())
    files = [str(uploads["leaf.jpg"]), str(hostile), str(uploads["text.jpg"])]
    pages = {backend: LeafPage.serving(load_predictor(app_run / "ckpt_best.pth", backend, torch.device("cpu"), logger),
                                       np.full(len(CLASSES), 0.4), LIMITS)
             for backend in ("torch", "onnx")}
    torch_html, onnx_html = (page.predict(files) for page in pages.values())
    assert "leaf-cam" in torch_html and "leaf-cam" not in onnx_html
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in onnx_html
    assert "<img src=x" not in onnx_html and REFUSALS["text.jpg"] in onnx_html
    torch_frame, onnx_frame = (csv_of(html_text) for html_text in (torch_html, onnx_html))
    assert len(onnx_frame) == 2
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
    page = LeafPage.serving(load_model_file(path, "torch", torch.device("cpu"), logger),
                            np.full(len(CLASSES), 0.4), LIMITS)
    assert page.cam is not None and page.cam_model.path.resolve() == members[0].resolve()
    assert page.cam_source.startswith("member 1 of 2 (app/ckpt_best.pth")
    files = [str(uploads["leaf.jpg"])]
    html_text = page.predict(files)
    assert "leaf-card" in html_text and "Not predicted" not in html_text
    singles = []
    for member in members:
        single = LeafPage.serving(load_predictor(member, "torch", torch.device("cpu"), logger),
                                  np.full(len(CLASSES), 0.4), LIMITS)
        singles.append(csv_of(single.predict(files))[list(CLASSES)].to_numpy())
    ensemble = csv_of(html_text)[list(CLASSES)].to_numpy()
    np.testing.assert_allclose(ensemble, np.mean(singles, axis=0), atol=1e-6)
    blocks = build_blocks(page, [], "Leaf disease check")
    assert "Grad-CAM of the predicted classes by member 1 of 2" in str(blocks.config)


def test_a_model_computing_nan_stops_before_serving_and_shows_no_bar(app_run, uploads):
    """Weights turned NaN after loading (what an ONNX file may compute): the start-up check raises (app.py: one
    line, exit 1), and a page refuses the photos with a line instead of showing ``complex`` and bars of nan%."""
    from deploy.web import NON_FINITE, LeafPage

    predictor = load_predictor(app_run / "ckpt_best.pth", "torch", torch.device("cpu"), logging.getLogger("test_app"))
    with torch.no_grad():
        for parameter in predictor.model.parameters():
            parameter.fill_(float("nan"))
    page = LeafPage.serving(predictor, np.full(len(CLASSES), 0.4), LIMITS)
    with pytest.raises(RunError, match="non-finite"):
        page.check(uploads["leaf.jpg"])
    html_text = page.predict([str(uploads["leaf.jpg"]), str(uploads["text.jpg"])])
    assert html_text.count(NON_FINITE) == 1 and REFUSALS["text.jpg"] in html_text
    assert "leaf-bars" not in html_text and "predictions.csv" not in html_text


def run_app(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_nan_checkpoint_is_one_line_at_start_up(app_run, tmp_path):
    ckpt = torch.load(app_run / "ckpt_best.pth", weights_only=True)
    ckpt["model"] = {name: value.fill_(float("nan")) if value.is_floating_point() else value
                     for name, value in ckpt["model"].items()}
    path = tmp_path / "nan.pth"
    torch.save(ckpt, path)
    done = run_app(["--checkpoint", str(path), "--port", str(free_port())], tmp_path)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}: ") and "non-finite" in line


def test_a_busy_port_is_one_line_before_the_model_loads(tmp_path):
    """A second app.py on a port in use: exit 1 at once. The checkpoint does not exist: a check made after
    loading it would say so instead (exit 2), as it did after 20 s of loading on real models."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = run_app(["--checkpoint", str(tmp_path / "missing.pth"), "--port", str(port)], tmp_path)
        elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [f"error: 127.0.0.1:{port}: the port is in use by another program "
                                                "(another app.py?); stop it or give --port N"]
    assert elapsed < 60  # imports only (seconds), on 2 busy cores


# ---------------------------------------------------------------------------------------------
# The server and the browser
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Recorder:
    """A local HTTP server that answers 502 to anything and keeps each request line: the app's proxy, so that
    any request the app makes to another machine (even a DNS-over-HTTPS lookup) shows up here."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def handle_one_request(self) -> None:
                line = self.rfile.readline(65537).decode("latin-1").strip()
                if line:
                    recorder.requests.append(line)
                    self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                self.close_connection = True

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Server:
    """``python app.py`` in a folder of its own, with its own TMPDIR and HOME to see what it writes, and every
    proxy variable pointing at ``proxy`` (127.0.0.1 itself excepted).

    Matplotlib's per-user font cache (made once per user by any matplotlib program) goes to a
    folder of its own, so that HOME shows what the app itself writes.
    """

    def __init__(self, checkpoint: Path, root: Path, proxy: str):
        self.cwd, self.tmp, self.home = root / "cwd", root / "tmp", root / "home"
        for folder in (self.cwd, self.tmp, self.home):
            folder.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "app.log"
        proxies = {name: proxy for name in ("http_proxy", "https_proxy", "all_proxy")}
        proxies |= {name.upper(): value for name, value in proxies.items()}
        env = {**os.environ, **proxies, "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
               "TMPDIR": str(self.tmp), "HOME": str(self.home), "PYTHONPATH": str(ROOT),
               "MPLCONFIGDIR": str(root / "matplotlib")}
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "app.py"), "--checkpoint", str(checkpoint), "--port", str(self.port),
                 "--max-file-mb", "1", "--max-megapixels", "4", "--upload-max-age", str(MAX_AGE)],
                cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT)

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
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="session")
def server(app_run, recorder, tmp_path_factory):
    server = Server(app_run / "ckpt_best.pth", tmp_path_factory.mktemp("server"), recorder.url)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def post_upload(server: Server, path: Path, **headers: str) -> httpx.Response:
    """``path`` sent to gradio's upload route as the page sends it (plus ``headers``)."""
    with path.open("rb") as file:
        return httpx.post(f"{server.url}/gradio_api/upload", files={"files": (path.name, file)}, headers=headers,
                          timeout=60)


def call_predict(server: Server, paths: list[str]) -> str:
    """The whole answer (server-sent events) to a prediction of ``paths`` through gradio's HTTP API."""
    files = [{"path": path, "meta": {"_type": "gradio.FileData"}} for path in paths]
    with httpx.Client(base_url=server.url, timeout=120) as client:
        event = client.post("/gradio_api/call/predict", json={"data": [files]}).json()["event_id"]
        return client.get(f"/gradio_api/call/predict/{event}").text


def fresh_file(folder: Path) -> Path:
    """A file no test uploaded before (gradio files an upload under the hash of its bytes)."""
    path = folder / f"fresh{os.urandom(4).hex()}.jpg"
    path.write_bytes(os.urandom(256))
    return path


@pytest.mark.slow
def test_nothing_but_uploads_is_served(server, uploads):
    """The app's log (it names the model's and thresholds' server paths), its example leaves, anything of its
    temporary folder but the uploads: refused."""
    [uploaded] = post_upload(server, uploads["leaf.jpg"]).json()
    assert httpx.get(f"{server.url}/gradio_api/file={uploaded}").status_code == 200
    private = [p for p in server.tmp.rglob("*") if p.is_file() and "uploads" not in p.relative_to(server.tmp).parts]
    assert "log.txt" in {p.name for p in private}
    for path in private:
        assert httpx.get(f"{server.url}/gradio_api/file={path}").status_code != 200, path


@pytest.mark.slow
def test_a_prediction_names_no_server_folder(server, uploads):
    [uploaded] = post_upload(server, uploads["leaf.jpg"]).json()
    answer = call_predict(server, [uploaded])
    assert str(server.tmp) not in answer and "leaf_app_" not in answer
    assert "leaf-card" in answer and "data:text/csv;base64," in answer  # the CSV travels in the answer itself


@pytest.mark.slow
@pytest.mark.parametrize("headers", [{"Origin": "https://evil.example"}, {"Origin": "null"},
                                     {"Host": "evil.example"}], ids=["other-site", "sandboxed", "rebound-dns"])
def test_other_sites_pages_cannot_upload(server, headers, tmp_path):
    """A cross-site form or fetch (its Origin), a sandboxed page ('null'), a DNS name rebound to 127.0.0.1 (its
    Host): 403 and nothing written. The page's own origin uploads."""
    refused, accepted = fresh_file(tmp_path), fresh_file(tmp_path)
    assert post_upload(server, refused, **headers).status_code == 403
    assert post_upload(server, accepted, Origin=server.url).status_code == 200
    written = {p.name for p in server.tmp.rglob("*")}
    assert accepted.name in written and refused.name not in written


@pytest.mark.slow
def test_uploads_are_removed_after_max_age(server, tmp_path):
    """Uploads never predicted (10 x 5 MB in half a second were kept an hour) are gone within --upload-max-age
    and its check interval (a fifth of it)."""
    [uploaded] = post_upload(server, fresh_file(tmp_path)).json()
    assert Path(uploaded).is_file()
    deadline = time.monotonic() + MAX_AGE * 1.2 + 20  # slack for 2 busy cores
    while Path(uploaded).exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not Path(uploaded).exists()


@pytest.mark.slow
def test_a_url_is_never_fetched(server, recorder):
    """A FileData path or a file route naming a URL: refused without resolving its host. Every request of the
    app goes through ``recorder`` (its proxy), which hears nothing in the whole session: gradio's own check
    asked dns.google about a local name through it."""
    answer = call_predict(server, [f"{recorder.url}/leaf.jpg"])
    file_route = f"{server.url}/gradio_api/file=http://localhost:{recorder.url.rsplit(':', 1)[1]}/leaf.jpg"
    status = httpx.get(file_route).status_code
    assert recorder.requests == []
    assert "event: error" in answer and "never fetched from a URL" in answer and status == 403


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
    with page.expect_download() as download:
        page.locator("a[download='predictions.csv']").first.click()
    frame = pd.read_csv(download.value.path(), keep_default_na=False)
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
    page.get_by_text("rust.jpg", exact=True).first.click()  # the model's first rust leaf, named after its labels
    page.wait_for_selector(".leaf-card[data-name='rust.jpg']", timeout=120_000)
    assert "rust" in shown(page, "rust.jpg")["labels"]


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
