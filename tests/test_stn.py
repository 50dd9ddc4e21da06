"""models/stn.py: the spatial transformer is the identity at initialisation, warps as its matrix says,
sits before any backbone (MODEL.STN), learns, and exports to ONNX."""
from __future__ import annotations

from argparse import Namespace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from config import get_config
from models import build_loss, build_model
from models.stn import SpatialTransformer

TINY = ["MODEL.SWIN.EMBED_DIM", 16, "MODEL.SWIN.DEPTHS", [1, 1], "MODEL.SWIN.NUM_HEADS", [1, 2],
        "MODEL.SWIN.WINDOW_SIZE", 4, "DATA.IMG_SIZE", 64, "MODEL.STN", True]


def pictures(size: tuple[int, int] = (48, 40)) -> torch.Tensor:
    return torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("size", [(48, 40), (64, 64), (97, 131)])
def test_identity_at_initialisation_for_any_size(size):
    torch.manual_seed(0)
    stn = SpatialTransformer().eval()
    x = pictures(size)
    torch.testing.assert_close(stn.theta(x), torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3))
    torch.testing.assert_close(stn(x), x, atol=5e-5, rtol=0)  # float32 rounding of the sampling grid


def test_a_set_translation_shifts_the_image_by_its_pixels():
    """theta's x-translation t moves the sampling grid by t * W / 2 pixels: t = 2 * 3 / W reads 3 columns
    to the right, so the output is the input shifted 3 columns left, zeros coming in at the right edge."""
    x = pictures((16, 32))
    shift = 3
    theta = torch.tensor([[1.0, 0, 2 * shift / 32], [0, 1.0, 0]]).expand(2, 2, 3)
    warped = SpatialTransformer().warp(x, theta)
    torch.testing.assert_close(warped[..., : 32 - shift], x[..., shift:], atol=1e-5, rtol=0)
    assert warped[..., 32 - shift:].abs().max() < 1e-6
    zoom = torch.tensor([[0.5, 0, 0], [0, 0.5, 0]]).expand(2, 2, 3)  # the central half, enlarged
    centre = SpatialTransformer().warp(torch.arange(32.0).expand(2, 3, 16, 32), zoom)[0, 0, 8]
    assert 7.5 < centre.min() and centre.max() < 24.5


@pytest.mark.parametrize("model_type", ["swin_tiny_patch4_window7_224", "test_resnet"])
def test_stn_in_front_of_a_backbone_learns_and_exports(model_type, tmp_path):
    opts = TINY if model_type.startswith("swin") else ["MODEL.TYPE", model_type, "DATA.IMG_SIZE", 64, "MODEL.STN", True]
    config = get_config(Namespace(cfg=None, opts=["MODEL.TYPE", model_type, *opts]))
    torch.manual_seed(0)
    model = build_model(config)
    assert isinstance(model.stn, SpatialTransformer)
    x, targets = pictures((64, 64)), torch.tensor([[1.0, 0, 0, 0, 0, 1], [0, 0, 1, 0, 0, 0]])
    without = build_model(get_config(Namespace(cfg=None, opts=["MODEL.TYPE", model_type, *opts[:-2], "MODEL.STN",
                                                                 False])))
    without.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("stn.")})
    torch.testing.assert_close(model.eval()(x), without.eval()(x), atol=1e-4, rtol=0)  # identity at init
    model.train()
    build_loss(config)(model(x, targets), targets).backward()
    assert model.stn.fc_loc[-1].weight.grad.abs().sum() > 0  # the warp's last layer learns from the first step
    model.eval()
    path = tmp_path / "stn.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["images"], output_names=["logits"], dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(["logits"], {"images": x.numpy()})[0]
    np.testing.assert_allclose(out, model(x).detach().numpy(), atol=1e-4)
