"""Pretrained weights: official Microsoft and timm files made here load; other architectures are refused."""
import re
from argparse import Namespace
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from config import get_config
from models import build_model
from models.pretrained import check_compatible, convert_pretrained_state_dict, unwrap_state_dict

TINY = dict(embed_dim=16, depths=(1, 1), num_heads=(1, 2), img_size=64)


def tiny_model(window: int = 8, *opts):
    """The tiny ArcPSA-Swin of the design at ``window`` (64 px: stage grids 16 and 8)."""
    config = get_config(Namespace(opts=[
        "MODEL.TYPE", "swin_tiny_patch4_window7_224", "MODEL.SWIN.EMBED_DIM", 16, "MODEL.SWIN.DEPTHS", [1, 1],
        "MODEL.SWIN.NUM_HEADS", [1, 2], "MODEL.SWIN.WINDOW_SIZE", window, "DATA.IMG_SIZE", 64,
        "MODEL.PSA.OUT_DIM", 32, "MODEL.HEAD", "arcface", "MODEL.PSA.ENABLE", True, *opts]))
    return build_model(config)


def source_swin(window: int = 4, **overrides) -> dict[str, torch.Tensor]:
    """An ImageNet-style timm Swin state dict: 1000-class ``head.fc``, its own random weights."""
    torch.manual_seed(1)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=1000,
                              window_size=window, **{**TINY, **overrides})
    return {k: v.clone() for k, v in model.state_dict().items()}


def to_microsoft_layout(timm_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename timm keys to the official repo's: downsample at the end of stage N, ``head.*``, plus buffers."""
    out = {}
    for key, value in timm_sd.items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        out[key.replace("head.fc.", "head.")] = value
        if key.endswith("attn.relative_position_bias_table"):
            block = key[: -len("relative_position_bias_table")]
            out[block + "relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    out["layers.0.blocks.0.attn_mask"] = torch.zeros(16, 16, 16)
    return out


def load(model, obj) -> tuple[list[str], list[str]]:
    """What checkpoint.load_pretrained does after reading the file."""
    converted = convert_pretrained_state_dict(unwrap_state_dict(obj), model)
    missing, unexpected = check_compatible(converted, model)
    model.load_state_dict(converted, strict=False)
    return missing, unexpected


def test_official_microsoft_file_with_1000_class_head_and_other_window(tmp_path: Path):
    src = source_swin(window=4)
    ms = to_microsoft_layout(src)
    assert "layers.0.downsample.reduction.weight" in ms and "head.weight" in ms
    path = tmp_path / "swin_tiny_patch4_window4_64.pth"
    torch.save({"model": ms, "epoch": 300}, path)

    model = tiny_model(window=8)
    head_before = model.head.centers.detach().clone()
    table_before = model.backbone.layers[0].blocks[0].attn.relative_position_bias_table.detach().clone()
    missing, unexpected = load(model, torch.load(path, map_location="cpu", weights_only=True))

    assert missing == [] and unexpected == []
    backbone = model.backbone
    assert torch.equal(backbone.layers[0].blocks[0].attn.qkv.weight, src["layers.0.blocks.0.attn.qkv.weight"])
    assert torch.equal(backbone.layers[1].blocks[0].mlp.fc2.weight, src["layers.1.blocks.0.mlp.fc2.weight"])
    # Microsoft's stage-0 downsample is timm's stage-1 downsample
    assert torch.equal(backbone.layers[1].downsample.reduction.weight, src["layers.1.downsample.reduction.weight"])
    assert torch.equal(backbone.patch_embed.proj.weight, src["patch_embed.proj.weight"])
    assert torch.equal(backbone.norm.weight, src["norm.weight"])
    # the 1000-class head is dropped: the 6-way ArcFace centres are untouched
    assert torch.equal(model.head.centers, head_before)
    # the 7x7-offset table of window 4 was resized to the 15x15 offsets of window 8
    table = backbone.layers[0].blocks[0].attn.relative_position_bias_table
    assert src["layers.0.blocks.0.attn.relative_position_bias_table"].shape == (49, 1)
    assert table.shape == (225, 1) and not torch.equal(table, table_before)
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 6)


def test_converted_keys_drop_head_and_buffers():
    model = tiny_model(window=8)
    converted = convert_pretrained_state_dict(to_microsoft_layout(source_swin(window=4)), model)
    assert all(k.startswith("backbone.") for k in converted)
    assert not any("head" in k or "relative_position_index" in k or "attn_mask" in k for k in converted)
    assert set(converted) == {k for k in model.state_dict() if k.startswith("backbone.")}


def test_timm_safetensors_file(tmp_path: Path):
    src = source_swin(window=8)
    path = tmp_path / "model.safetensors"
    save_file(src, str(path))
    model = tiny_model(window=8)
    missing, unexpected = load(model, load_file(str(path)))
    assert missing == [] and unexpected == []
    own = model.state_dict()
    for key, value in src.items():
        if not key.startswith("head."):
            assert torch.equal(own["backbone." + key], value), key


def test_timm_training_checkpoint_wrappers():
    """timm's train.py saves {'state_dict': ..., 'state_dict_ema': ...}; DDP adds 'module.'."""
    src = source_swin(window=8)
    wrapped = {"epoch": 3, "state_dict": {"module." + k: v for k, v in src.items()}, "arch": "swin"}
    model = tiny_model(window=8)
    assert load(model, wrapped) == ([], [])
    assert torch.equal(model.backbone.norm.bias, src["norm.bias"])


def test_our_own_checkpoint_gives_its_backbone_only():
    trained = tiny_model(window=8)
    with torch.no_grad():
        trained.head.centers.add_(1.0)
    fresh = tiny_model(8, "MODEL.HEAD", "linear")
    assert load(fresh, {"model": trained.state_dict(), "ema": None}) == ([], [])
    assert torch.equal(fresh.backbone.layers[0].blocks[0].attn.qkv.weight,
                       trained.backbone.layers[0].blocks[0].attn.qkv.weight)
    assert fresh.head.weight.shape == (6, 32)


def test_resnet_file_into_resnet_drops_fc():
    config = get_config(Namespace(opts=["MODEL.TYPE", "resnet10t", "DATA.IMG_SIZE", 64]))
    model = build_model(config)
    src = timm.create_model("resnet10t", pretrained=False, num_classes=1000).state_dict()
    assert load(model, src) == ([], [])
    assert torch.equal(model.backbone.conv1[0].weight, src["conv1.0.weight"])


def test_resnet_file_into_swin_is_refused(tmp_path: Path):
    path = tmp_path / "resnet18.pth"
    torch.save({"model": timm.create_model("resnet18", pretrained=False).state_dict()}, path)
    model = tiny_model()
    obj = torch.load(path, map_location="cpu", weights_only=True)
    with pytest.raises(ValueError, match="not a swin_tiny_patch4_window7_224 checkpoint: only 0 of"):
        load(model, obj)


def test_wider_swin_is_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        load(tiny_model(), to_microsoft_layout(source_swin(window=4, embed_dim=24)))


def test_deeper_swin_is_refused():
    with pytest.raises(ValueError, match="2 attention blocks are not in the model"):
        load(tiny_model(), to_microsoft_layout(source_swin(window=4, depths=(2, 2))))


def test_a_mostly_missing_backbone_is_refused():
    src = source_swin(window=8)
    half = {k: v for i, (k, v) in enumerate(src.items()) if i % 3 == 0}
    with pytest.raises(ValueError, match="backbone tensors found"):
        load(tiny_model(), half)


@pytest.mark.parametrize("obj", [{}, {"model": {}}, {"epoch": 1}, [torch.zeros(1)]])
def test_not_a_state_dict(obj):
    with pytest.raises(ValueError, match="not a state dict"):
        unwrap_state_dict(obj)
