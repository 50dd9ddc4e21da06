"""main.py end to end on a tiny tree and a tiny Swin: checkpoints, resume, early stop, DDP, pretrained."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from config import config_from_string, get_default_config
from data.dataset import MultiLabelImageFolder
from data.labels import CLASSES
from data.transforms import build_transform
from evaluation import inference
from evaluation.thresholds import read_thresholds, tune_thresholds
from helpers import ROOT, TINY_TRAINING, cli, load_script, make_tree, run_dir, run_script, val_thresholds
from models import ArcFaceHead, build_model
from models.build import counted_pos_weight
from training.checkpoint import load_checkpoint_file, load_pretrained
from utils.files import atomic_save
from utils.log import create_logger

main = load_script("main.py")
test_script = load_script("test.py")

ARCPSA = ["MODEL.HEAD", "arcface", "MODEL.PSA.ENABLE", "True"]
SELECTION = ["MODEL.EMA.ENABLE", "True", "MODEL.EMA.DECAY", "0.9", "TRAIN.EPOCHS", "4", "SAVE_FREQ", "1"]
CONTRACT_KEYS = {
    "model", "ema", "optimizer", "lr_scheduler", "scaler", "epoch", "step", "best_metric", "best_epoch", "rng",
    "thresholds", "classes", "config", "metrics",
}
VAL_IMAGES = 11  # odd: two ranks get different numbers of images


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree"), {"train": 24, "val": VAL_IMAGES})


def tiny_config(*opts: str):
    config = get_default_config()
    config.merge_from_list([*TINY_TRAINING, *opts])
    return config


@pytest.fixture(scope="module")
def trained(tree, output) -> Path:
    """A 2-epoch ArcFace + PSA run with EMA and a checkpoint every epoch."""
    assert main.main(cli(tree, output, "trained", *ARCPSA, "MODEL.EMA.ENABLE", "True", "SAVE_FREQ", "1")) == 0
    return run_dir(output, "trained")


@dataclass
class HeadCall:
    training: bool
    targets: torch.Tensor | None
    logits: torch.Tensor
    plain: torch.Tensor  # scale * cos(theta): the logits without any margin


@pytest.fixture(scope="module")
def selection(tree, output) -> tuple[Path, list[HeadCall]]:
    """4 epochs of ArcFace + PSA with a fast EMA selected on macro_f1, every call of the ArcFace head recorded."""
    calls: list[HeadCall] = []
    forward = ArcFaceHead.forward

    def recorded(head: ArcFaceHead, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        logits = forward(head, x, targets)
        with torch.no_grad():
            calls.append(HeadCall(head.training, targets, logits.detach(), head.scale * head.cosine(x.float())))
        return logits

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ArcFaceHead, "forward", recorded)
        assert main.main(cli(tree, output, "selection", *ARCPSA, *SELECTION)) == 0
    return run_dir(output, "selection"), calls


@pytest.mark.slow
def test_best_epoch_is_the_argmax_of_the_metric_in_history(selection):
    folder, _ = selection
    history = pd.read_csv(folder / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2, 3]
    best_epoch = int(history["epoch"][history["macro_f1"].idxmax()])
    # Seeded, the best epoch is a middle one: "the first", "the last" or a tie would all fail here.
    assert 0 < best_epoch < 3 and (history["macro_f1"] < history["macro_f1"].max()).sum() == 3
    best = load_checkpoint_file(folder / "ckpt_best.pth")
    assert (best["best_epoch"], best["epoch"]) == (best_epoch, best_epoch)
    assert best["best_metric"] == pytest.approx(history["macro_f1"].max())
    same_epoch = load_checkpoint_file(folder / f"ckpt_epoch_{best_epoch}.pth")
    assert all(torch.equal(same_epoch["ema"][k], v) for k, v in best["ema"].items())
    assert load_checkpoint_file(folder / "ckpt_latest.pth")["best_epoch"] == best_epoch


def predictor_of(folder: Path, ema_eval: bool, tmp_path: Path) -> inference.Predictor:
    """ckpt_best.pth of ``folder`` loaded for inference, its config's MODEL.EMA.EVAL set to ``ema_eval``."""
    ckpt = load_checkpoint_file(folder / "ckpt_best.pth")
    config = config_from_string(ckpt["config"])
    config.defrost()
    config.MODEL.EMA.EVAL = ema_eval
    path = tmp_path / f"best_ema_eval_{ema_eval}.pth"
    atomic_save({**ckpt, "config": config.dump()}, path)
    return inference.Predictor.from_checkpoint(path, torch.device("cpu"))


@pytest.mark.slow
def test_thresholds_json_is_tuned_on_the_selected_ema_weights(selection, tree, tmp_path):
    folder, _ = selection
    ema, raw = (predictor_of(folder, flag, tmp_path) for flag in (True, False))
    written = read_thresholds(folder / "thresholds.json")
    expected = val_thresholds(ema.model, tree / "val", ema.config)
    np.testing.assert_allclose(written, expected, atol=1e-6)
    np.testing.assert_allclose(load_checkpoint_file(folder / "ckpt_best.pth")["thresholds"], expected, atol=1e-6)
    assert not np.allclose(val_thresholds(raw.model, tree / "val", raw.config), expected)  # raw would differ


def flipped_val_thresholds(model: torch.nn.Module, val_dir: Path, config) -> np.ndarray:
    """Thresholds tuned on validation probabilities averaged (as logits) over each image and its two flips."""
    dataset = MultiLabelImageFolder(val_dir, build_transform(False, config))
    with torch.no_grad():
        logits = torch.cat([torch.stack([model(x), model(x.flip(-1)), model(x.flip(-2))]).mean(0)
                            for x, _ in DataLoader(dataset, batch_size=8)])
    return tune_thresholds(dataset.targets, torch.sigmoid(logits).numpy())


@pytest.mark.slow
def test_thresholds_tta_json_is_tuned_on_flipped_val_and_is_what_test_py_tta_uses(selection, tree, tmp_path):
    folder, _ = selection
    ema = predictor_of(folder, True, tmp_path)
    written = read_thresholds(folder / "thresholds_tta.json")
    np.testing.assert_allclose(written, flipped_val_thresholds(ema.model.eval(), tree / "val", ema.config), atol=1e-6)
    plain = read_thresholds(folder / "thresholds.json")
    assert not np.allclose(written, plain)  # flips change the probabilities, so the thresholds
    for name, extra, expected in (("tta", ["--tta"], written), ("plain", [], plain)):
        out = tmp_path / name
        args = ["--checkpoint", str(folder / "ckpt_best.pth"), "--split", "val", "--device", "cpu",
                "--output", str(out)]
        assert test_script.main([*args, *extra]) == 0
        table = pd.read_csv(out / "metrics.csv", index_col="row")
        np.testing.assert_allclose(table.loc[list(CLASSES), "threshold"], expected)


@pytest.mark.slow
def test_inference_uses_the_ema_weights_exactly_when_ema_eval(selection, tmp_path):
    folder, _ = selection
    ckpt = load_checkpoint_file(folder / "ckpt_best.pth")
    for ema_eval, part in ((True, "ema"), (False, "model")):
        loaded = predictor_of(folder, ema_eval, tmp_path).model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in ckpt[part].items()), part
    assert any(not torch.equal(ckpt["ema"][k], v) for k, v in ckpt["model"].items())  # the choice matters


@pytest.mark.slow
def test_targets_reach_the_arcface_head_in_training_only(selection):
    _, calls = selection
    training = [call for call in calls if call.training]
    evaluation = [call for call in calls if not call.training]
    assert len(training) == 4 * 6  # every training step of the 4 epochs of 6 steps
    for call in training:
        positive = call.targets == 1
        assert positive.any() and (call.logits[positive] < call.plain[positive]).all()  # the margin is there
        assert torch.equal(call.logits[~positive], call.plain[~positive])
    assert evaluation and all(call.targets is None and torch.equal(call.logits, call.plain) for call in evaluation)


@pytest.mark.slow
def test_run_dir_and_checkpoint_contract(trained):
    for name in ("config.yaml", "log.txt", "history.csv", "curves.png", "ckpt_latest.pth", "ckpt_best.pth",
                 "thresholds.json", "ckpt_epoch_0.pth", "ckpt_epoch_1.pth"):
        assert (trained / name).is_file(), name
    history = pd.read_csv(trained / "history.csv")
    assert history["epoch"].tolist() == [0, 1]
    assert {"train_loss", "train_macro_f1", "train_exact_match", "train_mAP", "val_loss", "lr", "macro_f1",
            "macro_f1_tuned", "accuracy_tuned", "exact_match_tuned", "acc_rust", "mAP"} <= set(history.columns)
    assert list(json.loads((trained / "thresholds.json").read_text())) == list(CLASSES)
    model = build_model(config_from_string((trained / "config.yaml").read_text()))
    assert (trained / "model.txt").read_text() == f"{model}\n"  # the module tree, as the fork prints it
    total, backbone = (f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f}M" for m in (model, model.backbone))
    assert f"{total} parameters, {total} trainable (backbone {backbone}, " in (trained / "log.txt").read_text()
    # the end of training: the best checkpoint's validation report, as test.py --split val writes it
    report = json.loads((trained / "val_best" / "metrics.json").read_text())
    assert report["split"] == "val" and report["best_epoch"] in (0, 1) and report["num_images"] == VAL_IMAGES
    assert report["metrics"]["macro"]["f1"] == pytest.approx(
        pd.read_csv(trained / "val_best" / "metrics.csv", index_col="row").loc["macro", "f1"])
    for name in ("metrics_bars.png", "pr_curves.png", "predictions.csv"):
        assert (trained / "val_best" / name).is_file(), name

    latest = torch.load(trained / "ckpt_latest.pth", map_location="cpu", weights_only=True)
    assert set(latest) == CONTRACT_KEYS
    assert (latest["epoch"], latest["step"], latest["classes"]) == (1, 0, list(CLASSES))
    assert latest["ema"] is not None and latest["scaler"] is None and len(latest["thresholds"]) == 6
    assert config_from_string(latest["config"]).MODEL.HEAD == "arcface"
    best = load_checkpoint_file(trained / "ckpt_best.pth")
    assert best["thresholds"] == list(json.loads((trained / "thresholds.json").read_text()).values())

    # The ArcFace centres are parameters: saved, and trained (they move between epochs).
    model = build_model(config_from_string(latest["config"]))
    head_keys = [f"head.{name}" for name, _ in model.head.named_parameters()]
    assert head_keys and all(k in latest["model"] for k in head_keys)
    first = load_checkpoint_file(trained / "ckpt_epoch_0.pth")
    assert any(not torch.equal(first["model"][k], latest["model"][k]) for k in head_keys)
    model.load_state_dict(latest["model"])


@pytest.mark.slow
def test_rerun_of_a_finished_run_resumes_and_does_nothing(tree, output, trained):
    before = load_checkpoint_file(trained / "ckpt_latest.pth")["model"]
    assert main.main(cli(tree, output, "trained", *ARCPSA, "MODEL.EMA.ENABLE", "True", "SAVE_FREQ", "1")) == 0
    after = load_checkpoint_file(trained / "ckpt_latest.pth")["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(pd.read_csv(trained / "history.csv")) == 2
    assert "resumed from" in (trained / "log.txt").read_text()


@pytest.mark.slow
def test_early_stopping_when_the_metric_cannot_improve(tree, output):
    frozen = ("TRAIN.BASE_LR", "0.0", "TRAIN.WARMUP_LR", "0.0", "TRAIN.MIN_LR", "0.0", "TRAIN.EPOCHS", "5",
              "TRAIN.PATIENCE", "1")
    assert main.main(cli(tree, output, "patience", *frozen)) == 0
    folder = run_dir(output, "patience")
    assert pd.read_csv(folder / "history.csv")["epoch"].tolist() == [0, 1]
    assert "early stop" in (folder / "log.txt").read_text()
    assert load_checkpoint_file(folder / "ckpt_best.pth")["best_epoch"] == 0


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tree, output):
    args = cli(tree, output, "nan", "TRAIN.EPOCHS", "1")
    assert main.main(args) == 0
    folder = run_dir(output, "nan")
    good = (folder / "ckpt_latest.pth").read_bytes()
    # Diverging optimizer state: the first step of epoch 1 makes every weight NaN.
    ckpt = load_checkpoint_file(folder / "ckpt_latest.pth")
    for state in ckpt["optimizer"]["state"].values():
        state["exp_avg_sq"].fill_(-1.0)
    atomic_save(ckpt, folder.parent / "diverging.pth")
    code = main.main(cli(tree, output, "nan", "TRAIN.EPOCHS", "2", "TRAIN.AUTO_RESUME", "False",
                         extra=("--resume", str(folder.parent / "diverging.pth"))))
    assert code == 1
    assert re.search(r"non-finite training loss \(nan\) at epoch 1 step 1", (folder / "log.txt").read_text())
    assert (folder / "ckpt_latest.pth").read_bytes() == good
    assert len(pd.read_csv(folder / "history.csv")) == 1


@pytest.mark.slow
def test_two_process_gloo_eval_equals_one_process(tree, output, trained):
    ckpt = str(trained / "ckpt_best.pth")
    opts = (*ARCPSA, "MODEL.EMA.ENABLE", "True")
    assert main.main(cli(tree, output, "eval1", *opts, extra=("--eval", "--checkpoint", ckpt))) == 0
    two = run_script(["--standalone", "--nproc_per_node=2", "main.py",
                      *cli(tree, output, "eval2", *opts, extra=("--eval", "--resume", ckpt))],  # the fork's spelling
                     module=("-m", "torch.distributed.run"))
    assert two.returncode == 0, two.stderr[-3000:]
    one = json.loads((run_dir(output, "eval1") / "eval_metrics.json").read_text())
    both = json.loads((run_dir(output, "eval2") / "eval_metrics.json").read_text())
    assert one["num_images"] == both["num_images"] == VAL_IMAGES
    assert one.keys() == both.keys()
    for key, value in one.items():
        if isinstance(value, float):
            assert value == pytest.approx(both[key], abs=1e-6, nan_ok=True), key


def official_swin_checkpoint(path: Path) -> dict:
    """A Microsoft-format file of the tiny Swin: 1000-class ``head``, window 8, end-of-stage downsample."""
    swin = timm.create_model("swin_tiny_patch4_window7_224", num_classes=1000, embed_dim=16, depths=(1, 1),
                             num_heads=(1, 2), window_size=8, img_size=64)
    state = {}
    for key, value in swin.state_dict().items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", key)
        state[key.replace("head.fc.", "head.")] = value
        if key.endswith("attn.relative_position_bias_table"):
            state[key.replace("bias_table", "index")] = torch.zeros(64, 64, dtype=torch.long)
    torch.save({"model": state}, path)
    return state


@pytest.mark.slow
def test_pretrained_official_checkpoint_loads_through_main(tree, output, tmp_path):
    official = official_swin_checkpoint(tmp_path / "swin_official.pth")
    model = build_model(tiny_config())
    config = tiny_config()
    config.merge_from_list(["MODEL.PRETRAINED", str(tmp_path / "swin_official.pth")])
    load_pretrained(config, model, create_logger(tmp_path, name="pretrained_test"))
    assert torch.equal(model.backbone.patch_embed.proj.weight, official["patch_embed.proj.weight"])
    assert torch.equal(model.backbone.layers[1].downsample.reduction.weight,
                       official["layers.0.downsample.reduction.weight"])
    log = (tmp_path / "log.txt").read_text()
    assert re.search(r"initialised fresh \(not in the file\): .*head\.", log)  # our 6-way head

    assert main.main(cli(tree, output, "pretrained", "TRAIN.EPOCHS", "1",
                         extra=("--pretrained", str(tmp_path / "swin_official.pth")))) == 0
    assert "pretrained:" in (run_dir(output, "pretrained") / "log.txt").read_text()


def test_pretrained_timm_safetensors_and_wrong_architecture(tmp_path):
    config = tiny_config()
    source = build_model(config)
    save_file({k: v.contiguous() for k, v in source.backbone.state_dict().items()}, tmp_path / "timm.safetensors")
    target = build_model(config)
    config.merge_from_list(["MODEL.PRETRAINED", str(tmp_path / "timm.safetensors")])
    load_pretrained(config, target, create_logger(tmp_path, name="pretrained_test"))
    assert all(torch.equal(v, target.backbone.state_dict()[k]) for k, v in source.backbone.state_dict().items())

    torch.save({"model": {"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(1000, 8)}},
               tmp_path / "resnet.pth")
    config.merge_from_list(["MODEL.PRETRAINED", str(tmp_path / "resnet.pth")])
    with pytest.raises(ValueError, match="resnet.pth"):
        load_pretrained(config, build_model(config), create_logger(tmp_path, name="pretrained_test"))


@pytest.mark.slow
def test_throughput_bench_prints_model_and_loader_figures(tree, capsys):
    bench = load_script("bench/throughput.py")
    assert bench.main(["--cfg", str(ROOT / "configs" / "demo_cpu.yaml"), "--data-path", str(tree), "--batch-size", "4",
                       "--opts", "DATA.NUM_WORKERS", "0", "DATA.IMG_SIZE", "64", "MODEL.SWIN.WINDOW_SIZE", "2"]) == 0
    printed = capsys.readouterr().out
    assert float(re.search(r"model throughput: ([\d.]+) img/s", printed).group(1)) > 0
    assert float(re.search(r"loader throughput: ([\d.]+) img/s", printed).group(1)) > 0


def test_unknown_config_key_is_an_error(tree, output, tmp_path):
    with pytest.raises(ValueError, match="TRAIN.NO_SUCH_KEY"):
        main.main(cli(tree, output, "bad", "TRAIN.NO_SUCH_KEY", "1"))
    (tmp_path / "bad.yaml").write_text("MODEL:\n  NO_SUCH_KEY: 1\n")
    with pytest.raises(ValueError, match="NO_SUCH_KEY"):
        main.main(cli(tree, output, "bad", extra=("--cfg", str(tmp_path / "bad.yaml"))))
    with pytest.raises(ValueError, match="BEST_METRIC"):
        main.main(cli(tree, output, "bad", "TRAIN.BEST_METRIC", "top1_accuracy"))


def test_train_tmux_without_tmux_says_how_to_get_it(tree, output, tmp_path):
    """A PATH without tmux (bash itself given by its full path)."""
    command = [shutil.which("bash"), "scripts/train_tmux.sh", "no_tmux", "--", *cli(tree, output, "no_tmux")]
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "PATH": str(tmp_path)}, capture_output=True,
                            text=True)
    assert result.returncode == 1 and "error: tmux is not installed" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)  # two detached runs, each given 300 s
def test_train_tmux_runs_detached_and_starting_it_again_resumes(tree, output):
    assert shutil.which("tmux"), "tmux is not installed: make test installs it (make tmux)"
    session = f"pp_test_{os.getpid()}"
    log = run_dir(output, "tmux") / "tmux.log"
    command = ["scripts/train_tmux.sh", session, "--", *cli(tree, output, "tmux")]

    def start_and_wait_for_exit(runs: int) -> str:
        started = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHON": sys.executable},
                                 capture_output=True, text=True)
        assert started.returncode == 0 and f"started tmux session '{session}'" in started.stdout, started.stderr
        deadline = time.monotonic() + 300
        while (log.read_text() if log.exists() else "").count("main.py exited with code") < runs:
            assert time.monotonic() < deadline, "the tmux run did not finish"
            time.sleep(0.5)
        subprocess.run(["tmux", "kill-session", "-t", f"={session}"], capture_output=True)
        return log.read_text()

    try:
        first = start_and_wait_for_exit(1)
        assert "main.py exited with code 0" in first and "resumed" not in first
        assert (run_dir(output, "tmux") / "ckpt_best.pth").is_file()
        second = start_and_wait_for_exit(2)[len(first):]
        assert "resumed from" in second and "main.py exited with code 0" in second
    finally:
        subprocess.run(["tmux", "kill-session", "-t", f"={session}"], capture_output=True)


def test_train_tmux_usage_error():
    result = subprocess.run(["scripts/train_tmux.sh", "only-a-name"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "usage: scripts/train_tmux.sh SESSION -- <main.py arguments>" in result.stderr


def test_counted_positive_weights_are_used_and_recorded(tree, output):
    assert main.main(cli(tree, output, "posweight", "TRAIN.EPOCHS", "1", "LOSS.NAME", "asl",
                         "LOSS.POS_WEIGHT_AUTO", "True")) == 0
    folder = run_dir(output, "posweight")
    recorded = config_from_string((folder / "config.yaml").read_text())
    targets = MultiLabelImageFolder(tree / "train").targets
    assert list(recorded.LOSS.POS_WEIGHT) == counted_pos_weight(targets, 0.5) != [1.0] * 6
    saved = config_from_string(load_checkpoint_file(folder / "ckpt_best.pth")["config"])
    assert list(saved.LOSS.POS_WEIGHT) == list(recorded.LOSS.POS_WEIGHT)


def test_pretrained_weights_given_as_resume_are_refused_naming_pretrained(tree, output, tmp_path):
    """The fork's habit: official weights as --resume. One line naming the file and --pretrained; nothing trained."""
    official_swin_checkpoint(tmp_path / "swin_official.pth")
    with pytest.raises(ValueError, match=r"swin_official.pth: not a checkpoint of main.py \(no .*\): it holds weights "
                                         r"only; to start from pretrained weights, give them as --pretrained "):
        main.main(cli(tree, output, "resume_official", extra=("--resume", str(tmp_path / "swin_official.pth"))))
    assert not (run_dir(output, "resume_official") / "ckpt_latest.pth").exists()
