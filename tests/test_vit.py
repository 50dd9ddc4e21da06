"""ViT-family backbones (timm ViT, DeiT, EVA-02): patch grids for the PSA neck, timm's pooling for the linear head,
the shipped ViT configs training and exporting to ONNX, pretrained files of another input size."""
from __future__ import annotations

import logging
from argparse import Namespace
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from config import get_config
from data.labels import NUM_CLASSES
from deploy.onnx_export import PARITY_TOLERANCE, export_checked
from evaluation.inference import ModelInfo
from helpers import TINY_VIT_TYPES
from models import build_loss, build_model
from models.family import VIT, family, family_of
from models.psa import PSANeck, ReportPSANeck
from models.stn import SpatialTransformer
from models.vit import PatchGrid
from training.checkpoint import load_pretrained
from training.engine import build_optimizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TARGETS = torch.tensor([[1, 0, 0, 0, 0, 1], [0, 0, 1, 0, 0, 0]], dtype=torch.float32)
SHIPPED = ("demo_vit_cpu.yaml", "eva02_stn.yaml")  # the ViT-family configs
SMALL = ["DATA.IMG_SIZE", 64, "MODEL.PSA.OUT_DIM", 32]
TINY_DEPTH = 2  # blocks kept for the ONNX export (each block adds seconds to the exporter's tracing)


def vit_config(model_type: str = "test_vit", *opts, cfg: Path | None = None):
    return get_config(Namespace(cfg=str(cfg) if cfg else None, opts=["MODEL.TYPE", model_type, *SMALL, *opts]))


def images(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("model_type", ["test_vit", "deit_tiny_distilled_patch16_224", "eva02_tiny_patch14_224",
                                        "test_vit2"])
def test_patch_grid_drops_the_prefix_tokens(model_type):
    """Class, distillation and register tokens lead the sequence; the rest are the patches, row by row."""
    torch.manual_seed(0)
    model = build_model(vit_config(model_type)).eval()
    backbone = model.backbone
    assert family(model_type) == family_of(backbone) == VIT and isinstance(model.to_grid, PatchGrid)
    tokens = backbone.forward_features(images())
    grid = model.to_grid(tokens)
    height, width = backbone.patch_embed.grid_size
    assert grid.shape == (2, backbone.num_features, height, width)
    prefix = backbone.num_prefix_tokens
    torch.testing.assert_close(grid[:, :, 1, 2], tokens[:, prefix + 1 * width + 2])
    # timm's own intermediates agree on the layout of the last block's patch tokens
    last = backbone.forward_intermediates(images(), indices=1, norm=True, intermediates_only=True)[-1]
    torch.testing.assert_close(grid, last, atol=1e-5, rtol=0)
    assert model.features(images()).shape == (2, backbone.num_features)  # timm's pooling, no grid


@pytest.mark.parametrize("neck", ["light", "report"])
def test_psa_neck_and_arcface_head_on_the_patch_grid(neck):
    config = vit_config("test_vit", "MODEL.HEAD", "arcface", "MODEL.PSA.ENABLE", True, "MODEL.PSA.NECK", neck)
    model = build_model(config)
    assert isinstance(model.neck, ReportPSANeck if neck == "report" else PSANeck) and model.neck.input_fmt == "NCHW"
    model.train()
    logits = model(images(), TARGETS)
    build_loss(config)(logits, TARGETS).backward()
    assert logits.shape == (2, NUM_CLASSES)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.eval().features(images()).shape == (2, 32)


def test_patch_grid_refuses_a_sequence_of_another_length():
    with pytest.raises(ValueError, match=r"expected \(B, 1 \+ 4 x 4, C\) tokens, got shape \(2, 10, 8\)"):
        PatchGrid((4, 4), 1)(torch.zeros(2, 10, 8))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_vit_config_trains_two_steps_and_exports_with_parity(name, tmp_path):
    """At tiny size: 64 px, the family's smallest backbone (TINY_VIT_TYPES) cut to its first TINY_DEPTH blocks."""
    shipped_type = get_config(Namespace(cfg=str(CONFIGS / name))).MODEL.TYPE
    assert family(shipped_type) == VIT
    tiny_type = TINY_VIT_TYPES.get(shipped_type, shipped_type)
    config = get_config(Namespace(cfg=str(CONFIGS / name), opts=["MODEL.TYPE", tiny_type, *SMALL]))
    torch.manual_seed(0)
    model = build_model(config)
    model.backbone.blocks = model.backbone.blocks[:TINY_DEPTH]
    assert isinstance(model.stn, SpatialTransformer) == config.MODEL.STN
    optimizer, loss_fn = build_optimizer(config, model), build_loss(config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    for _ in range(2):
        loss = loss_fn(model(images(), TARGETS), TARGETS)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters() if n.startswith("backbone.blocks"))
    data, parity = export_checked(model.eval(), ModelInfo.from_config(config, None), tmp_path / "vit.onnx")
    assert data and parity <= PARITY_TOLERANCE


@pytest.mark.parametrize("model_type", ["test_vit", "eva02_tiny_patch14_224"])
def test_pretrained_file_of_another_input_size_loads(model_type, tmp_path):
    """A timm ImageNet-style file made at 224 px (1000-class head) into the 64 px model: every block's weights
    load and the position embedding is resampled to the 64 px grid."""
    torch.manual_seed(1)
    source = timm.create_model(model_type, pretrained=False, num_classes=1000, img_size=224)
    path = tmp_path / f"{model_type}.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    config = vit_config(model_type, "MODEL.PRETRAINED", str(path))
    torch.manual_seed(0)
    model = build_model(config)
    load_pretrained(config, model, logging.getLogger("test_vit"))
    own = model.backbone.state_dict()
    for key in ("blocks.0.attn.proj.weight", "blocks.1.mlp.fc1.weight", "cls_token", "patch_embed.proj.weight"):
        torch.testing.assert_close(own[key], source.state_dict()[key], msg=key)
    height, width = model.backbone.patch_embed.grid_size
    prefix = model.backbone.num_prefix_tokens
    assert own["pos_embed"].shape[1] == prefix + height * width < source.pos_embed.shape[1]
    torch.testing.assert_close(own["pos_embed"][:, :prefix], source.state_dict()["pos_embed"][:, :prefix])
    assert model.eval()(images()).shape == (2, NUM_CLASSES)
