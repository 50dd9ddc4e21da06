"""A checkpoint's network as ONNX bytes, checked by ``onnx.checker`` and against PyTorch on leaf pixels.

The graph comes from ``torch.onnx.export(dynamo=True)`` (the torch.export-based exporter; it
handles Swin's ``torch.roll`` and window attention, the PSA neck and the ArcFace head's
label-free evaluation logits) at the exporter's current opset, with a dynamic batch dimension and
the model's fixed height and width. Parity is the largest |sigmoid difference| between ONNX
Runtime and PyTorch over seeded synthetic photos (smooth random colour fields with fine noise,
so every channel and frequency gets exercised) put through the model's own evaluation transform,
as one batch and one by one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch
from PIL import Image
from torch import nn

from data.transforms import EvalPreprocessing
from deploy.onnx_backend import INPUT_NAME, OUTPUT_NAME, OnnxModel, info_to_metadata, open_session
from evaluation.inference import ModelInfo, Predictor, require_finite
from models.ensemble import tta_logits
from utils.errors import RunError

PARITY_TOLERANCE = 1e-4
PARITY_PHOTOS = 8
PARITY_PHOTO_SIZE = (400, 300)


class ParityError(RunError):
    """ONNX Runtime and PyTorch disagree beyond PARITY_TOLERANCE (or by NaN): the export is not to be used."""


def export_onnx(model: nn.Module, info: ModelInfo) -> bytes:
    """``model`` (evaluation logits) as a checked ONNX model carrying ``info`` in its metadata.

    Exported from a batch of 2, so the batch dimension stays symbolic rather than specialised to 1.
    """
    size = info.preprocessing.img_size
    model = model.float().cpu().eval()
    example = torch.zeros(2, 3, size, size)
    program = torch.onnx.export(
        model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamo=True, verbose=False,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    proto = program.model_proto
    strip_node_metadata(proto)
    proto.doc_string = (f"{info.describe()}: {INPUT_NAME} float32 N x 3 x {size} x {size} (normalised RGB) -> "
                        f"{OUTPUT_NAME} N x {len(info.classes)} (sigmoid gives the probabilities)")
    onnx.helper.set_model_props(proto, info_to_metadata(info))
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def strip_node_metadata(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node debugging metadata: its stack traces name this machine's folders (the
    source tree, the virtual environment), and running the graph needs none of it."""
    for graph_nodes in (proto.graph.node, *(function.node for function in proto.functions)):
        for node in graph_nodes:
            del node.metadata_props[:]


def parity_photo(rng: np.random.Generator, size: tuple[int, int] = PARITY_PHOTO_SIZE) -> Image.Image:
    """A photo-like test image: a smooth random colour field (a few cells, upsampled) plus pixel noise."""
    width, height = size
    cells = rng.integers(2, 9)
    field = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    noise = rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(field, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def parity_images(preprocessing: EvalPreprocessing, seed: int = 0) -> torch.Tensor:
    """Seeded synthetic photos through the model's evaluation transform: (PARITY_PHOTOS, 3, H, W)."""
    transform = preprocessing.transform()
    rng = np.random.default_rng(seed)
    return torch.stack([transform(parity_photo(rng)) for _ in range(PARITY_PHOTOS)])


@torch.inference_mode()
def max_prob_difference(model: nn.Module, other: nn.Module, images: torch.Tensor, name: Path) -> float:
    """Largest |probability difference| between two models on ``images``, as one batch and one by one;
    ``model``'s logits must be finite (else a RunError naming the model file ``name``)."""
    expected = torch.sigmoid(torch.from_numpy(require_finite(model(images).float().numpy(), name)))
    batched = torch.sigmoid(other(images).float())
    singles = torch.cat([torch.sigmoid(other(image[None]).float()) for image in images])
    return max((batched - expected).abs().max().item(), (singles - expected).abs().max().item())


def check_parity(difference: float, name: Path) -> None:
    """Raises :class:`ParityError`, naming the model file ``name``, unless ``difference`` is within
    PARITY_TOLERANCE (a NaN difference is not)."""
    if not difference <= PARITY_TOLERANCE:
        raise ParityError(f"{name}: ONNX Runtime differs from PyTorch by {difference:.2e} in probability "
                          f"(tolerance {PARITY_TOLERANCE:.0e})")


def export_checked(model: nn.Module, info: ModelInfo, name: Path) -> tuple[bytes, float]:
    """(ONNX bytes, parity) of ``model`` (a checkpoint's network, or an ensemble's) with ``info`` stored in it.

    Raises a RunError naming the model file ``name`` when PyTorch's logits are not finite, and
    :class:`ParityError` when ONNX Runtime strays more than PARITY_TOLERANCE from them.
    """
    data = export_onnx(model, info)
    onnx_model = OnnxModel(open_session(data, name))
    difference = max_prob_difference(model, onnx_model, parity_images(info.preprocessing), name)
    check_parity(difference, name)
    return data, difference


@torch.inference_mode()
def member_preprocessing_difference(model: nn.Module, info: ModelInfo, members: Sequence[Predictor]) -> float:
    """Largest |probability difference| between an ensemble module fed ``info``'s preprocessing and its
    members each fed their own (test.py's way), averaged as ``model`` weighs them, on the parity photos."""
    rng = np.random.default_rng(0)
    photos = [parity_photo(rng) for _ in range(PARITY_PHOTOS)]
    source = torch.stack([info.preprocessing.transform()(p) for p in photos])
    expected = torch.sigmoid(model(source).float())
    own = 0
    for weight, member in zip(model.weights, members):
        images = torch.stack([member.transform(p) for p in photos])
        logits = tta_logits(member.model, images) if model.tta else member.model(images)
        own = own + weight * torch.sigmoid(logits.float())
    return float((expected - own).abs().max())
