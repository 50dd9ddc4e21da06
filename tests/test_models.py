"""Models at tiny size: every config's network trains, PSA keeps shapes, ArcFace is exact and label-free
at inference."""
import math
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from config import get_config
from data.labels import NUM_CLASSES
from data.loader import build_mixup
from helpers import TINY_VIT_TYPES
from models import ArcFaceHead, MultiLabelNet, PolarizedSelfAttention, PSANeck, build_loss, build_model
from models.build import counted_pos_weight
from models.family import OTHER, SWIN, VIT, family, family_of, timm_name
from models.losses import MultiLabelBCELoss, MultiLabelFocalLoss
from models.psa import ReportPSANeck

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
# small inputs and embeddings for every model
SMALL = ["DATA.IMG_SIZE", 64, "MODEL.PSA.OUT_DIM", 32]
# the tiny Swin of the design (each config keeps its own MODEL.TYPE)
TINY = ["MODEL.SWIN.EMBED_DIM", 16, "MODEL.SWIN.DEPTHS", [1, 1], "MODEL.SWIN.NUM_HEADS", [1, 2],
        "MODEL.SWIN.WINDOW_SIZE", 4, "MODEL.SWIN.PATCH_SIZE", 4, *SMALL]
SWIN_T = ["MODEL.TYPE", "swin_tiny_patch4_window7_224"]
ARCPSA = ["MODEL.HEAD", "arcface", "MODEL.PSA.ENABLE", True]
TARGETS = torch.tensor([[1, 0, 0, 0, 0, 1], [0, 0, 1, 0, 0, 0]], dtype=torch.float32)


def tiny_config(*opts, cfg: Path | None = None):
    return get_config(Namespace(cfg=str(cfg) if cfg else None, opts=TINY + list(opts)))


def seeded_model(config) -> nn.Module:
    """build_model under a fixed seed: tests that compare logits see the same weights every run."""
    torch.manual_seed(0)
    return build_model(config)


def images(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def train_step(model: nn.Module, config) -> torch.Tensor:
    """One forward/backward in training mode; returns the logits."""
    model.train()
    logits = model(images(), TARGETS)
    build_loss(config)(logits, TARGETS).backward()
    return logits


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_trains_at_tiny_size(path: Path):
    """Swin configs shrunk to the tiny Swin, ViT-family ones swapped for their family's smallest model
    (TINY_VIT_TYPES); the others (EfficientNet-Lite) keep their backbone at 64 px."""
    model_type = get_config(Namespace(cfg=str(path))).MODEL.TYPE
    if family(model_type) == SWIN:
        config = tiny_config(cfg=path)
    else:
        tiny_type = TINY_VIT_TYPES.get(model_type, model_type)
        config = get_config(Namespace(cfg=str(path), opts=[*SMALL, "MODEL.TYPE", tiny_type]))
    model = build_model(config)
    logits = train_step(model, config)
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without a gradient: {no_grad}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert isinstance(model.head, ArcFaceHead) == (config.MODEL.HEAD == "arcface")
    assert isinstance(model.neck, (PSANeck, ReportPSANeck)) == config.MODEL.PSA.ENABLE


@pytest.mark.parametrize("opts", [[], ["LOSS.NAME", "focal"], ARCPSA, ["MODEL.HEAD", "arcface"],
                                  ["MODEL.PSA.ENABLE", True], ["TRAIN.USE_CHECKPOINT", True]],
                         ids=["linear", "focal", "arcpsa", "arcface_no_psa", "psa_linear", "grad_ckpt"])
def test_heads_losses_and_necks(opts: list):
    config = tiny_config(*SWIN_T, *opts)
    model = build_model(config)
    assert train_step(model, config).shape == (2, NUM_CLASSES)
    assert all(p.grad is not None for p in model.parameters())
    width = 32 if config.MODEL.PSA.ENABLE else model.backbone.num_features
    assert model.eval().features(images()).shape == (2, width)


def test_swin_overrides_and_no_pretrained_download(monkeypatch):
    def download(*args, **kwargs):
        raise AssertionError("build_model asked timm for pretrained weights")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", download)  # where every timm download starts
    model = build_model(tiny_config(*SWIN_T))
    backbone = model.backbone
    assert backbone.num_features == 32 and len(backbone.layers) == 2
    assert backbone.patch_embed.img_size == (64, 64)
    assert backbone.layers[0].blocks[0].attn.window_size == (4, 4)
    assert backbone.output_fmt == "NHWC"


def test_upstream_swin_type_is_understood():
    model = build_model(tiny_config("MODEL.TYPE", "swin"))
    assert model.backbone.num_features == 32


def test_model_type_errors():
    with pytest.raises(ValueError, match="not a timm model"):
        build_model(tiny_config("MODEL.TYPE", "no_such_net"))
    with pytest.raises(ValueError, match="only apply to Swin"):
        build_model(tiny_config("MODEL.TYPE", "resnet10t"))


def test_num_classes_stays_six():
    config = tiny_config(*SWIN_T, *ARCPSA)
    assert config.MODEL.NUM_CLASSES == NUM_CLASSES == 6
    model = build_model(config)
    assert model.head.centers.shape == (6, 32)
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        tiny_config("MODEL.NUM_CLASSES", 1000)


# --------------------------------------------------------------------------------------- PSA


def test_psa_keeps_shape_and_weights_are_gates():
    psa = PolarizedSelfAttention(16)
    x = torch.randn(2, 16, 5, 7)
    assert psa(x).shape == x.shape
    channel, spatial = psa.channel_weights(x), psa.spatial_weights(x)
    assert channel.shape == (2, 16, 1, 1) and spatial.shape == (2, 1, 5, 7)
    assert ((channel > 0) & (channel < 1)).all() and ((spatial > 0) & (spatial < 1)).all()
    torch.testing.assert_close(psa(x), x * channel * psa.spatial_weights(x * channel))


def test_psa_neck_reads_nhwc_as_nchw():
    nchw = PSANeck(16, 8, "NCHW")
    nhwc = PSANeck(16, 8, "NHWC")
    nhwc.load_state_dict(nchw.state_dict())
    x = torch.randn(2, 16, 4, 6)
    torch.testing.assert_close(nhwc(x.permute(0, 2, 3, 1)), nchw(x))
    assert nchw(x).shape == (2, 8)


def test_psa_on_swin_nhwc_backbone():
    model = build_model(tiny_config(*SWIN_T, *ARCPSA))
    assert model.neck.input_fmt == "NHWC"
    assert model.neck.psa.ch_wv.in_channels == model.backbone.num_features == 32
    assert model.backbone.forward_features(images()).shape == (2, 8, 8, 32)  # NHWC: 64 px / 4 / 2
    assert model.eval().features(images()).shape == (2, 32)


def test_psa_on_resnet_nchw_backbone():
    config = get_config(Namespace(opts=["MODEL.TYPE", "resnet10t", "DATA.IMG_SIZE", 64,
                                        "MODEL.PSA.OUT_DIM", 32, *ARCPSA]))
    model = build_model(config)
    assert model.neck.input_fmt == "NCHW"
    assert model.neck.psa.ch_wv.in_channels == model.backbone.num_features == 512
    logits = train_step(model, config)
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()
    assert all(p.grad is not None for p in model.parameters())


def test_psa_rejects_token_sequences():
    with pytest.raises(ValueError, match="4-D feature map"):
        PSANeck(16, 8)(torch.randn(2, 10, 16))


# ----------------------------------------------------------------------------------- ArcFace

CENTRE_ANGLES = [0.3, 1.0, 1.7, 2.5, 2.9, 3.1]  # theta of each centre to an embedding at angle 0


def unit_head(margin: float = 0.5, scale: float = 30.0, easy: bool = False) -> ArcFaceHead:
    """A 2-D head whose centre j sits CENTRE_ANGLES[j] radians from the x axis."""
    head = ArcFaceHead(2, 6, scale=scale, margin=margin, easy_margin=easy)
    with torch.no_grad():
        head.centers.copy_(torch.tensor([[math.cos(a), math.sin(a)] for a in CENTRE_ANGLES]) * 3.0)
    return head


def expected_logits(targets: list[int], margin: float, scale: float, easy: bool) -> list[float]:
    """ArcFace by hand from the angles: cos(theta + m) at positives with its fallback, cos elsewhere."""
    out = []
    for theta, positive in zip(CENTRE_ANGLES, targets):
        cos = math.cos(theta)
        if positive and easy:
            cos = math.cos(theta + margin) if cos > 0 else cos
        elif positive:
            cos = math.cos(theta + margin) if theta + margin < math.pi else cos - margin * math.sin(margin)
        out.append(scale * cos)
    return out


@pytest.mark.parametrize("easy", [False, True], ids=["fallback", "easy_margin"])
@pytest.mark.parametrize("targets", [[1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0]])
def test_arcface_margin_arithmetic(targets: list[int], easy: bool):
    head = unit_head(margin=0.5, scale=30.0, easy=easy).train()
    x = torch.tensor([[2.0, 0.0]])  # any length: the embedding is normalised
    logits = head(x, torch.tensor([targets], dtype=torch.float32))
    expected = torch.tensor([expected_logits(targets, 0.5, 30.0, easy)])
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)


def test_arcface_fallback_is_used_past_pi():
    """Centres at 2.9 and 3.1 rad: theta + 0.5 > pi, so cos(theta) - m sin(m) is used there."""
    head = unit_head(margin=0.5).train()
    logits = head(torch.tensor([[1.0, 0.0]]), torch.ones(1, 6))[0] / 30.0
    for j in (4, 5):
        assert logits[j].item() == pytest.approx(math.cos(CENTRE_ANGLES[j]) - 0.5 * math.sin(0.5), abs=1e-5)
    assert logits[0].item() == pytest.approx(math.cos(0.8), abs=1e-5)


def test_arcface_without_labels_is_scaled_cosine():
    head = unit_head(scale=30.0)
    x = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    cos = torch.tensor([[math.cos(a) for a in CENTRE_ANGLES], [math.sin(a) for a in CENTRE_ANGLES]])
    for mode in (head.train(), head.eval()):
        torch.testing.assert_close(mode(x), 30.0 * cos, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head.eval()(x, torch.ones(2, 6)), 30.0 * cos, atol=1e-5, rtol=1e-5)


def test_model_uses_no_labels_at_inference():
    model = seeded_model(tiny_config(*SWIN_T, *ARCPSA)).eval()
    x = images()
    with torch.no_grad():
        plain = model(x)
        for targets in (TARGETS, torch.ones(2, 6), torch.zeros(2, 6)):
            assert torch.equal(model(x, targets), plain)
        cos = F.linear(F.normalize(model.features(x)), F.normalize(model.head.centers))
    torch.testing.assert_close(plain, model.head.scale * cos)


def test_margin_only_in_training_and_only_lowers_positive_logits():
    model = seeded_model(tiny_config(*SWIN_T, *ARCPSA, "MODEL.DROP_PATH_RATE", 0.0))
    x = images()
    model.train()
    with torch.no_grad():
        margin = model(x, TARGETS)
        plain = model(x)
    assert torch.equal(margin[TARGETS == 0], plain[TARGETS == 0])
    assert (margin[TARGETS == 1] < plain[TARGETS == 1]).all()


def test_arcface_with_fractional_mixup_targets_blends_margin_and_plain_logits():
    """t * cos(theta + m) + (1 - t) * cos(theta) per class, by hand, for mixup's soft targets."""
    head = unit_head(margin=0.5, scale=30.0).train()
    targets = torch.tensor([[0.7, 0.3, 0.0, 1.0, 0.5, 0.25]])
    logits = head(torch.tensor([[1.0, 0.0]]), targets)[0]
    margin = torch.tensor(expected_logits([1] * 6, 0.5, 30.0, False))
    plain = torch.tensor(expected_logits([0] * 6, 0.5, 30.0, False))
    torch.testing.assert_close(logits, targets[0] * margin + (1 - targets[0]) * plain, atol=1e-4, rtol=1e-5)


def test_mixup_targets_reach_the_arcface_head_of_the_model():
    config = tiny_config(*SWIN_T, *ARCPSA, "MODEL.DROP_PATH_RATE", 0.0, "AUG.MIXUP", 0.8)
    model = seeded_model(config).train()
    np.random.seed(0)  # timm draws lambda from NumPy
    x, targets = build_mixup(config)(images(), TARGETS.clone())
    assert ((targets > 0) & (targets < 1)).any()  # soft targets
    logits = model(x, targets)
    with torch.no_grad():
        cosine = model.head.cosine(model.features(x))
    expected = model.head.scale * (cosine + targets * (model.head.add_margin(cosine) - cosine))
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)
    build_loss(config)(logits, targets).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_arcface_centres_are_trained_and_saved():
    config = tiny_config(*SWIN_T, *ARCPSA)
    model = build_model(config)
    centres = model.head.centers
    assert any(p is centres for p in model.parameters())
    assert "head.centers" in model.state_dict()
    assert "head.centers" in model.no_weight_decay()
    before = centres.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_step(model, config)
    assert centres.grad is not None and centres.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(before, model.head.centers.detach())
    restored = build_model(config)
    restored.load_state_dict(model.state_dict())
    assert torch.equal(restored.head.centers, model.head.centers)


def test_linear_head_ignores_targets():
    model = seeded_model(tiny_config(*SWIN_T)).eval()
    with torch.no_grad():
        assert torch.equal(model(images(), TARGETS), model(images()))


def test_no_weight_decay_names_are_parameters():
    model = build_model(tiny_config(*SWIN_T, *ARCPSA))
    names = dict(model.named_parameters())
    assert model.no_weight_decay() and model.no_weight_decay() <= set(names)
    assert any("relative_position_bias_table" in n for n in model.no_weight_decay())


@pytest.mark.parametrize("opts, neck, head", [([], nn.Identity, nn.Linear), (ARCPSA, PSANeck, ArcFaceHead)],
                         ids=["linear", "arcpsa"])
def test_built_model_has_the_configured_parts_and_six_logits(opts: list, neck: type, head: type):
    """Backbone of MODEL.TYPE (headless), neck, dropout and head as configured; (N, 6) logits of (N, D) features."""
    config = tiny_config(*SWIN_T, *opts, "MODEL.PSA.OUT_DIM", 24, "MODEL.DROP_RATE", 0.25,
                         "MODEL.ARCFACE.SCALE", 16.0, "MODEL.ARCFACE.MARGIN", 0.3)
    model = build_model(config)
    assert isinstance(model, MultiLabelNet)
    assert model.backbone.pretrained_cfg["architecture"] == "swin_tiny_patch4_window7_224"
    assert model.backbone.num_classes == 0 and model.backbone.num_features == 32
    assert type(model.neck) is neck and type(model.head) is head
    assert model.head_drop.p == 0.25
    width = 24 if config.MODEL.PSA.ENABLE else 32  # the PSA neck projects to MODEL.PSA.OUT_DIM
    if head is ArcFaceHead:
        assert model.head.centers.shape == (NUM_CLASSES, width)
        assert (model.head.scale, model.head.margin) == (16.0, 0.3)
    else:
        assert (model.head.in_features, model.head.out_features) == (width, NUM_CLASSES)
    with torch.no_grad():
        assert model.eval().features(images(3)).shape == (3, width)
        logits = model(images(3))
    assert logits.shape == (3, NUM_CLASSES) and torch.isfinite(logits).all()


# ------------------------------------------------------------------------------------ losses


def test_bce_with_label_smoothing():
    logits, targets = torch.randn(4, 6), (torch.rand(4, 6) > 0.5).float()
    smoothed = targets * 0.8 + 0.1
    torch.testing.assert_close(MultiLabelBCELoss(0.2)(logits, targets),
                               F.binary_cross_entropy_with_logits(logits, smoothed))
    torch.testing.assert_close(MultiLabelBCELoss()(logits, targets),
                               F.binary_cross_entropy_with_logits(logits, targets))


def test_focal_loss_by_hand():
    logits, targets = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    p = torch.sigmoid(logits)
    by_hand = torch.stack([-0.25 * (1 - p[0, 0]) ** 2 * torch.log(p[0, 0]),
                           -0.75 * p[0, 1] ** 2 * torch.log(1 - p[0, 1])]).mean()
    torch.testing.assert_close(MultiLabelFocalLoss(0.25, 2.0)(logits, targets), by_hand)
    torch.testing.assert_close(MultiLabelFocalLoss(0.25, 2.0)(logits, targets),
                               sigmoid_focal_loss(logits, targets, 0.25, 2.0, reduction="mean"))
    # gamma 0 and no alpha weighting is plain BCE
    torch.testing.assert_close(MultiLabelFocalLoss(-1, 0.0)(logits, targets),
                               F.binary_cross_entropy_with_logits(logits, targets))


def test_build_loss_from_config():
    focal = build_loss(tiny_config("LOSS.NAME", "focal", "LOSS.FOCAL_GAMMA", 1.5, "MODEL.LABEL_SMOOTHING", 0.1))
    assert isinstance(focal, MultiLabelFocalLoss) and (focal.gamma, focal.smoothing) == (1.5, 0.1)
    assert isinstance(build_loss(tiny_config()), MultiLabelBCELoss)


def test_arcface_logits_are_float32_under_autocast():
    head = unit_head().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(torch.tensor([[1.0, 0.0]], dtype=torch.bfloat16), torch.ones(1, 6))
    assert logits.dtype == torch.float32
    expected = torch.tensor([expected_logits([1] * 6, 0.5, 30.0, False)])
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)


def test_asl_without_focusing_or_clipping_is_bce_summed_over_classes():
    logits, targets = torch.tensor([[2.0, -1.0, 0.5], [0.3, 1.2, -2.0]]), torch.tensor([[1.0, 0, 1], [0, 0, 1]])
    asl = build_loss(tiny_config("LOSS.NAME", "asl", "LOSS.ASL_GAMMA_NEG", 0.0, "LOSS.ASL_GAMMA_POS", 0.0,
                                 "LOSS.ASL_CLIP", 0.0))
    per_image = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(1).mean()
    torch.testing.assert_close(asl(logits, targets), per_image, atol=1e-6, rtol=1e-5)


def test_asl_does_not_scale_with_the_batch_and_is_float32_under_autocast():
    asl = build_loss(tiny_config("LOSS.NAME", "asl"))
    logits, targets = torch.randn(4, 6), (torch.rand(4, 6) > 0.7).float()
    torch.testing.assert_close(asl(logits.repeat(8, 1), targets.repeat(8, 1)), asl(logits, targets))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = asl(logits.bfloat16() * 20, targets)  # confident logits: float16/bfloat16 probabilities underflow
    assert low.dtype == torch.float32 and torch.isfinite(low)


def test_positive_weights_weigh_each_class_positives():
    logits, targets = torch.tensor([[0.5, -0.5, 1.0, 0, 0, 0]]), torch.tensor([[1.0, 1, 0, 0, 0, 0]])
    weights = [2.0, 3.0, 1.0, 1.0, 1.0, 1.0]
    bce = build_loss(tiny_config("LOSS.POS_WEIGHT", weights))
    p = torch.sigmoid(logits[0])
    by_hand = torch.stack([-2 * torch.log(p[0]), -3 * torch.log(p[1]), -torch.log(1 - p[2]),
                           *(-torch.log(1 - p[3:]))]).mean()
    torch.testing.assert_close(bce(logits, targets), by_hand)
    with pytest.raises(ValueError, match="LOSS.POS_WEIGHT must be"):
        tiny_config("LOSS.POS_WEIGHT", [1.0, 2.0])
    with pytest.raises(ValueError, match="LOSS.POS_WEIGHT_AUTO weighs the positives of bce or asl"):
        tiny_config("LOSS.NAME", "focal", "LOSS.POS_WEIGHT_AUTO", True)  # its checkpoints could not be loaded


def test_positive_weights_counted_on_the_training_targets():
    targets = np.array([[1, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 1]])
    # complex 1 of 4: 3 negatives per positive; healthy 3 of 4: 1/3; no frog_eye_leaf_spot at all: 1
    assert counted_pos_weight(targets, 1.0) == [3.0, 1.0, 0.3333, 1.0, 1.0, 3.0]
    assert counted_pos_weight(targets, 0.5) == [1.7321, 1.0, 0.5774, 1.0, 1.0, 1.7321]


def test_report_psa_neck_has_the_reports_layers_widths_and_init():
    """conv-BN-PReLU, PSA, conv-BN-PReLU, pool, Linear(C, 768)-BN1d-PReLU, Linear(768, 512)-BN1d-PReLU;
    Kaiming convs (std sqrt(2 / fan_out)), N(0, 0.01) linears, zero biases; input width from the backbone."""
    torch.manual_seed(0)
    neck = ReportPSANeck(96, 512, 768)
    kinds = [type(m).__name__ for m in (*neck.conv_in, *neck.conv_out, *neck.embed)]
    assert kinds == ["Conv2d", "BatchNorm2d", "PReLU", "Conv2d", "BatchNorm2d", "PReLU",
                     "Linear", "BatchNorm1d", "PReLU", "Linear", "BatchNorm1d", "PReLU"]
    assert isinstance(neck.psa, PolarizedSelfAttention)
    first, second = neck.embed[0], neck.embed[3]
    assert (first.in_features, first.out_features, second.out_features) == (96, 768, 512)
    assert first.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert neck.conv_in[0].weight.std().item() == pytest.approx(math.sqrt(2 / 96), rel=0.05)
    assert all(float(m.bias.abs().max()) == 0 for m in (neck.conv_in[0], first, second))
    out = neck.train()(torch.randn(4, 96, 5, 5))
    assert out.shape == (4, 512)
    assert neck.eval()(torch.randn(1, 96, 5, 5)).shape == (1, 512)  # a batch of one at inference


def test_report_neck_in_the_arcpsa_swin_config_and_the_light_one_kept():
    report = build_model(tiny_config(cfg=CONFIGS[0].parent / "arcpsa_swin.yaml"))
    assert isinstance(report.neck, ReportPSANeck) and report.neck.embed[0].in_features == 32  # tiny Swin's width
    light = build_model(tiny_config(*SWIN_T, *ARCPSA))
    assert isinstance(light.neck, PSANeck)
    with pytest.raises(ValueError, match="MODEL.PSA.NECK must be one of light, report, got 'heavy'"):
        tiny_config(*SWIN_T, *ARCPSA, "MODEL.PSA.NECK", "heavy")


@pytest.mark.parametrize("model_type, expected", [
    ("swin", SWIN), ("swin_tiny_patch4_window7_224", SWIN), ("swinv2_tiny_window8_256", SWIN), ("test_vit", VIT),
    ("deit_tiny_distilled_patch16_224", VIT), ("eva02_tiny_patch14_224", VIT), ("tf_efficientnet_lite0", OTHER),
    ("test_resnet", OTHER), ("no_such_model", OTHER)])
def test_one_family_rule_by_name_and_of_the_built_backbone(model_type, expected):
    """The builder, the explainers and the runtime choice ask models/family.py, by MODEL.TYPE or of a backbone."""
    assert family(model_type) == expected
    if expected != OTHER or timm.is_model(model_type):
        assert family_of(timm.create_model(timm_name(model_type), pretrained=False, num_classes=0)) == expected
