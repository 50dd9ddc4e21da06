"""The web page of ``app.py`` (Gradio): drop leaf photos, read each one's labels, probabilities and Grad-CAM.

Per photo the page shows the labels under Kaggle's rules (``reports.submission_labels``), a bar
per class with its probability and a mark at its threshold, and (PyTorch backend) a Grad-CAM
overlay for each predicted class. Probabilities come from ``evaluation.evaluate.file_logits``, test.py's own
path, so a photo scores the same in the page and on the command line, and its predictions.csv has
test.py's columns (``reports.predictions_frame``). A refused or unreadable
file gets a line saying why, and the others go on. Nothing leaves the machine: no analytics, system
fonts, no CDN, and a file named by URL is never fetched.

Nothing is served but the uploads: pictures and the CSV travel inside the results' HTML (data URIs),
the example leaves are predicted where they lie, and no response names a server folder but the upload's
own (gradio's upload answer, which the browser quotes back). Uploads are removed ``max_age_s`` after they
arrived, and requests from another site's page (another Origin, or a DNS name rebound to this machine)
are refused.
"""
from __future__ import annotations

import base64
import functools
import html
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read by gradio at import: no telemetry or update check

import gradio as gr
import numpy as np
from gradio_client.utils import is_http_url_like
from PIL import Image
from pytorch_grad_cam.base_cam import BaseCAM
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from data.dataset import first_leaf_of_each_class
from data.images import FORMAT_NAMES, image_failure, load_image
from data.labels import CLASS_INDEX, CLASSES, vector_to_labels
from deploy.uploads import UploadError, UploadLimits, check_upload, display_name
from evaluation.ensemble_file import EnsemblePredictor
from evaluation.evaluate import file_logits
from evaluation.inference import Backend, sigmoid
from evaluation.reports import PREDICTIONS_CSV, predictions_frame, submission_labels
from explain.gradcam import build_cam, class_maps, overlay
from utils.errors import RunError
from utils.files import atomic_write, atomic_write_bytes

PHOTO_SIDE = 448  # longer side of the photo and CAM pictures in the page
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
NON_FINITE = "the model computed NaN or infinity for the photos sent together with this one: none is shown"
FILE_URL = re.compile(r"/file[=/]+https?:", re.IGNORECASE)  # gradio's file routes fetch a URL given as the path
SYSTEM_FONTS = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
CSS = """
.leaf-card {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 14px; margin-bottom: 14px;
  background: var(--block-background-fill);}
.leaf-card.refused {border-color: #d9534f; background: rgba(217, 83, 79, 0.08);}
.leaf-head {display: flex; gap: 14px; align-items: flex-start;}
.leaf-photo {width: 150px; border-radius: 6px;}
.leaf-name {font-weight: 600; font-size: 1.05em; word-break: break-all;}
.leaf-labels {margin: 6px 0;}
.leaf-label {display: inline-block; background: #2e7d32; color: #fff; border-radius: 12px; padding: 2px 10px;
  margin: 2px 4px 2px 0; font-weight: 600;}
.leaf-note, .leaf-error {font-size: 0.92em;}
.leaf-error {color: #c9302c; font-weight: 600;}
.leaf-bars {width: 100%; border-collapse: collapse; margin-top: 8px;}
.leaf-bars, .leaf-bars tr, .leaf-bars td {border: none !important; background: transparent !important;}
.leaf-bars td {padding: 3px 6px;}
.leaf-bars td.cls {width: 11em; white-space: nowrap;}
.leaf-bars tr.chosen td.cls {font-weight: 700;}
.leaf-bars td.num {width: 9em; font-family: var(--font-mono); white-space: nowrap; text-align: right;}
.leaf-track {position: relative; height: 14px; background: var(--neutral-200); border-radius: 7px;}
.leaf-fill {position: absolute; left: 0; top: 0; bottom: 0; border-radius: 7px; background: #9e9e9e;}
tr.passed .leaf-fill {background: #43a047;}
.leaf-thr {position: absolute; top: -3px; bottom: -3px; width: 2px; background: #d32f2f;}
.leaf-cams {display: flex; flex-wrap: wrap; gap: 10px; margin-top: 10px;}
.leaf-cams figure {margin: 0; text-align: center;}
.leaf-cam {height: 150px; border-radius: 6px;}
.leaf-csv {display: inline-block; margin-bottom: 10px; font-weight: 600;}
"""


@dataclass
class LeafResult:
    """One uploaded file: its probabilities and labels, or why it was refused."""

    name: str
    error: str = ""
    note: str = ""
    probs: np.ndarray | None = None
    labels: str = ""
    photo: Image.Image | None = None
    cams: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (class, overlay) per predicted class


@dataclass
class LeafPage:
    """What the page predicts with."""

    predictor: Backend | EnsemblePredictor
    thresholds: np.ndarray
    cam: BaseCAM | None  # None: no Grad-CAM (ONNX backend)
    limits: UploadLimits
    cam_model: Backend | None = None  # whose Grad-CAM: the predictor, or one member of an ensemble
    cam_source: str = ""  # how the page names it

    @classmethod
    def serving(cls, predictor: Backend | EnsemblePredictor, thresholds: np.ndarray, limits: UploadLimits
                ) -> "LeafPage":
        """The page of ``predictor``: Grad-CAM on the PyTorch backend, none on ONNX Runtime (no gradients)
        nor for a backbone without a known target layer (explain.gradcam.default_target_layer). An ensemble's bars
        are the ensemble's; its Grad-CAM is its first member's (one network's map: the average of several
        maps would be no network's), and the page says which."""
        model, source = predictor, "the model"
        if isinstance(predictor, EnsemblePredictor):
            model = predictor.members[0]
            source = (f"member 1 of {len(predictor.members)} ({model.path.parent.name}/{model.path.name}, "
                      f"{model.info.model_type})")
        try:
            cam = build_cam(model.model) if model.backend == "torch" else None
        except ValueError:
            cam = None
        return cls(predictor, thresholds, cam, limits, model, source)

    @property
    def description(self) -> str:
        """The model, as the page and the app's log name it."""
        if isinstance(self.predictor, EnsemblePredictor):
            return self.predictor.describe()
        return f"{self.predictor.info.describe()} on {self.predictor.backend}"

    def predict(self, files: Sequence[str] | None) -> str:
        """The HTML of the results, their predictions.csv link included, for the files the browser sent."""
        if not files:
            return f'<p class="leaf-note">Drop leaf photos ({FORMAT_NAMES}) or click an example.</p>'
        files = list(files)
        results = self.score(files[: self.limits.max_files])
        results += [LeafResult(display_name(f), f"not read: at most {self.limits.max_files} photos at a time")
                    for f in files[self.limits.max_files:]]
        return csv_link(self.csv_text(results)) + render_results(results, self.thresholds)

    def score(self, files: Sequence[str]) -> list[LeafResult]:
        """Upload checks, then one batch through the predictor, then Grad-CAM of the predicted classes."""
        results = [LeafResult(display_name(f)) for f in files]
        for result, path in zip(results, files):
            try:
                result.note = check_upload(Path(path), self.limits)
            except UploadError as error:
                result.error = str(error)
        good = [(r, Path(p)) for r, p in zip(results, files) if not r.error]
        if not good:
            return results
        try:
            logits, errors = file_logits(self.predictor, [p for _, p in good], len(good), num_workers=0)
        except RunError:  # non-finite outputs (evaluation.inference.require_finite): no bar of such a batch is shown
            for result, _ in good:
                result.error = NON_FINITE
            return results
        for (result, path), logit, error in zip(good, logits, errors):
            result.error = error
            if not error:
                self.explain(result, path, sigmoid(logit))
        return results

    def explain(self, result: LeafResult, path: Path, probs: np.ndarray) -> None:
        """Labels under Kaggle's rules, the photo and its CAM overlays into ``result``."""
        try:
            photo = load_image(path, PHOTO_SIDE)
        except Exception as error:  # noqa: BLE001 - Pillow raises many types on bad data
            result.error = image_failure(error)
            return
        photo.thumbnail((PHOTO_SIDE, PHOTO_SIDE))
        result.probs, result.photo = probs, photo
        result.labels = submission_labels(probs[None], self.thresholds)[0]
        if self.cam is not None:
            classes = [CLASS_INDEX[name] for name in result.labels.split()]
            maps, _ = class_maps(self.cam, photo, self.cam_model.transform, classes)
            result.cams = [(CLASSES[c], overlay(photo, m)) for c, m in zip(classes, maps)]

    def csv_text(self, results: Sequence[LeafResult]) -> str:
        """predictions.csv of the scored files, as test.py writes it: image, six probabilities, predicted
        ('' when none was scored)."""
        scored = [r for r in results if r.probs is not None]
        if not scored:
            return ""
        frame = predictions_frame([r.name for r in scored], np.stack([r.probs for r in scored]), self.thresholds)
        return frame.to_csv(index=False)

    def check(self, example: Path) -> None:
        """Predict one example leaf: a model that computes NaN or infinity stops the app before it serves
        (evaluation.inference.require_finite raises), rather than refusing every photo."""
        file_logits(self.predictor, [example], 1, num_workers=0)


def write_example_leaves(data_path: str | Path, folder: Path) -> list[Path]:
    """Copies of the first test leaf of each class of the model's own tree, named after their true labels
    (``rust.jpg``, ``complex+scab.jpg``): the page's examples; none when that tree is not here."""
    try:
        leaves = first_leaf_of_each_class(data_path)
    except FileNotFoundError:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for path, target in leaves:
        example = folder / f"{'+'.join(vector_to_labels(target))}.jpg"
        if example not in examples:
            atomic_write_bytes(Path(path).read_bytes(), example)
            examples.append(example)
    return examples


def neutral_photo(folder: Path) -> Path:
    """A plain grey JPEG: what the start-up check predicts when there is no example leaf."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "grey.jpg"
    atomic_write(path, lambda f: Image.new("RGB", (64, 64), (128, 128, 128)).save(f, format="JPEG"))
    return path


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------


def csv_link(text: str) -> str:
    """A download link holding the CSV itself: no file on the server to serve, no folder to name."""
    if not text:
        return ""
    data = base64.b64encode(text.encode()).decode("ascii")
    return (f'<a class="leaf-csv" download="{PREDICTIONS_CSV}" href="data:text/csv;base64,{data}">'
            f"Download {PREDICTIONS_CSV}</a>")


def data_uri(picture: Image.Image | np.ndarray) -> str:
    """A picture as an inline JPEG: the page needs no file route for it."""
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def bar_rows(probs: np.ndarray, thresholds: np.ndarray, labels: str) -> str:
    """One row per class: name, probability bar with its threshold mark, probability / threshold."""
    rows = []
    for name, prob, threshold in zip(CLASSES, probs, thresholds):
        state = " ".join(s for s, on in (("chosen", name in labels.split()), ("passed", prob >= threshold)) if on)
        rows.append(
            f'<tr class="{state}" data-class="{name}"><td class="cls">{name}</td>'
            f'<td><div class="leaf-track"><div class="leaf-fill" style="width:{100 * prob:.1f}%"></div>'
            f'<div class="leaf-thr" style="left:{100 * threshold:.1f}%" title="threshold {threshold:.2f}"></div>'
            f'</div></td><td class="num"><span class="prob">{prob:.4f}</span> / {threshold:.2f}</td></tr>')
    return f'<table class="leaf-bars">{"".join(rows)}</table>'


def render_card(result: LeafResult, thresholds: np.ndarray) -> str:
    """The HTML of one file: a refusal line, or labels, bars and CAMs."""
    name = html.escape(result.name)
    if result.probs is None:
        return (f'<div class="leaf-card refused" data-name="{name}"><div class="leaf-name">{name}</div>'
                f'<div class="leaf-error">Not predicted: {html.escape(result.error)}</div></div>')
    chips = "".join(f'<span class="leaf-label">{label}</span>' for label in result.labels.split())
    note = f'<div class="leaf-note">{html.escape(result.note)}</div>' if result.note else ""
    cams = "".join(f'<figure><img class="leaf-cam" alt="Grad-CAM {label}" src="{data_uri(pixels)}">'
                   f'<figcaption>Grad-CAM: {label}</figcaption></figure>' for label, pixels in result.cams)
    photo = f'<img class="leaf-photo" alt="photo" src="{data_uri(result.photo)}">' if result.photo else ""
    return (f'<div class="leaf-card" data-name="{name}"><div class="leaf-head">{photo}<div style="flex:1">'
            f'<div class="leaf-name">{name}</div><div class="leaf-labels">{chips}</div>{note}'
            f'{bar_rows(result.probs, thresholds, result.labels)}</div></div>'
            f'{f"<div class=leaf-cams>{cams}</div>" if cams else ""}</div>')


def render_results(results: Sequence[LeafResult], thresholds: np.ndarray) -> str:
    return "".join(render_card(result, thresholds) for result in results)


# ---------------------------------------------------------------------------------------------
# The page and the server
# ---------------------------------------------------------------------------------------------


def never_fetching(files: gr.File) -> gr.File:
    """``files``, refusing an input FileData whose path is a URL, which gradio would resolve (through dns.google
    when the host is not public) and download. gradio moves every input file of a request to its cache through
    this method; it is replaced on the instance, since a subclass of a component makes gradio write a .pyi
    stub beside this module."""
    move = files.async_move_resource_to_block_cache

    async def move_local_only(url_or_file_path: str | Path | None) -> str | None:
        if is_http_url_like(url_or_file_path):
            raise gr.Error("a photo is read from this page's uploads only, never fetched from a URL")
        return await move(url_or_file_path)

    files.async_move_resource_to_block_cache = move_local_only
    return files


def build_blocks(page: LeafPage, examples: Sequence[Path], title: str) -> gr.Blocks:
    """The page: uploads and example leaves on the left, the CSV link and one card per photo on the right.

    An example is predicted where it lies, by its button: neither its path nor its pixels go to the browser.
    """
    cam = (f"Grad-CAM of the predicted classes by {page.cam_source}" if page.cam is not None else
           "no Grad-CAM (it needs a PyTorch checkpoint of a backbone with a known target layer)")
    age = page.limits.max_age_s
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(max(1, age // 5), age)) as blocks:
        gr.Markdown(f"## {html.escape(title)}\n{html.escape(page.description)}; "
                    f"{cam}. Each bar is a class's probability, its red mark the class's threshold; the labels "
                    f"(in bold) follow Kaggle's rules: never empty, `healthy` never with a disease.")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                files = never_fetching(gr.File(label="Leaf photos", file_count="multiple", file_types=["image"],
                                               type="filepath"))
                gr.Markdown("Example leaves (the model's test split, named after their labels):",
                            visible=bool(examples))
                with gr.Row():
                    buttons = {gr.Button(path.name, size="sm"): path for path in examples}
                gr.Markdown(f"At most {page.limits.max_files} photos of {page.limits.max_bytes / 2**20:.0f} MB "
                            f"and {page.limits.max_pixels / 1e6:g} megapixels each; uploads are removed after "
                            f"{age} s.")
            with gr.Column(scale=2):
                results = gr.HTML(page.predict(None), elem_id="results")
        files.change(page.predict, inputs=files, outputs=results)
        for button, path in buttons.items():
            button.click(functools.partial(page.predict, [str(path)]), outputs=results, api_visibility="private")
    return blocks


class SameSiteOnly:
    """ASGI middleware: a 403 for what another site's page could send to this local server.

    - an ``Origin`` other than the page's own (a cross-site form or fetch: it would upload blind);
    - on a loopback address, a ``Host`` that is not a loopback name (a DNS name rebound to 127.0.0.1 makes
      the attacker's page same-origin);
    - a file route naming a URL (gradio would fetch it: nothing leaves the machine).
    Requests without ``Origin`` (the page's own GETs, command-line clients) pass the first check.
    """

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reason = refusal(scope, self.hosts) if scope["type"] == "http" else ""
        if reason:
            await PlainTextResponse(reason, status_code=403)(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def refusal(scope: Scope, hosts: frozenset[str] | None) -> str:
    """Why ``SameSiteOnly`` refuses the request of ``scope`` ('' if it does not)."""
    headers = Headers(scope=scope)
    host, origin = headers.get("host", "").lower(), headers.get("origin")
    if hosts is not None and urlsplit(f"//{host}").hostname not in hosts:
        return "refused: this page answers to its own address only"
    if origin is not None and origin.lower() != f"{scope['scheme']}://{host}":
        return "refused: a request from another site's page"
    if FILE_URL.search(scope["path"]):
        return "refused: nothing is fetched from a URL"
    return ""


def page_hosts(host: str) -> frozenset[str] | None:
    """The host names the page answers to: loopback names when it listens on loopback, else any (None)."""
    return LOOPBACK if host.lower().strip("[]") in LOOPBACK else None


def serve(blocks: gr.Blocks, host: str, port: int, limits: UploadLimits, private: Sequence[Path], queue_size: int,
          concurrency: int) -> None:
    """Serve ``blocks`` until interrupted: a bounded queue, uploads capped at ``limits.max_bytes``, nothing of
    ``private`` served (nor anything else outside gradio's upload folder: no ``allowed_paths``)."""
    theme = gr.themes.Soft(primary_hue="green", font=SYSTEM_FONTS, font_mono=MONO_FONTS)
    blocks.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    blocks.launch(server_name=host, server_port=port, max_file_size=limits.max_bytes,
                  blocked_paths=[str(path) for path in private],
                  app_kwargs={"middleware": [Middleware(SameSiteOnly, hosts=page_hosts(host))]},
                  theme=theme, css=CSS, footer_links=[], ssr_mode=False, pwa=False, mcp_server=False,
                  enable_monitoring=False, show_error=True, max_threads=8)
