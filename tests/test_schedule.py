"""The learning-rate schedules: plateau stepped on the validation metric; training metrics per epoch."""
from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, f1_score

from config import get_default_config
from helpers import cli, load_script, make_tree, run_dir
from training.engine import TrainOutputs
from training.schedule import PlateauSchedule, build_scheduler

main = load_script("main.py")


def plateau_config(patience: int, factor: float = 0.5, warmup_epochs: int = 0):
    config = get_default_config()
    config.merge_from_list(["TRAIN.LR_SCHEDULER.NAME", "plateau", "TRAIN.LR_SCHEDULER.PATIENCE_EPOCHS", str(patience),
                            "TRAIN.LR_SCHEDULER.DECAY_RATE", str(factor), "TRAIN.BASE_LR", "0.1",
                            "TRAIN.WARMUP_LR", "0.001", "TRAIN.MIN_LR", "0.02", "TRAIN.WARMUP_EPOCHS",
                            str(warmup_epochs)])
    return config


def two_group_optimizer() -> torch.optim.Optimizer:
    """A head group at the schedule's lr and a backbone group at a tenth of it (``lr_scale``)."""
    head, backbone = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    return torch.optim.AdamW([{"params": [head], "lr_scale": 1.0}, {"params": [backbone], "lr_scale": 0.1}], lr=0.1)


def run_epochs(schedule, optimizer, metrics: list[float], updates_per_epoch: int, start: int = 0) -> list[float]:
    """The head lr during each epoch, stepping per update and then on the epoch's metric."""
    lrs = []
    for epoch, metric in enumerate(metrics, start=start):
        lrs.append(optimizer.param_groups[0]["lr"])
        for update in range(epoch * updates_per_epoch + 1, (epoch + 1) * updates_per_epoch + 1):
            schedule.step_update(update)
        schedule.step(epoch + 1, metric)
    return lrs


@pytest.mark.parametrize("patience", [0, 2])
def test_plateau_lowers_the_lr_after_patience_epochs_without_improvement(patience):
    optimizer = two_group_optimizer()
    schedule = build_scheduler(plateau_config(patience), optimizer, updates_per_epoch=3)
    assert isinstance(schedule, PlateauSchedule)
    # improves at epochs 0-1, then flat: the lr halves after patience + 1 flat epochs, twice, then stays at MIN_LR
    metrics = [0.5, 0.6] + [0.6] * (3 * (patience + 1))
    lrs = run_epochs(schedule, optimizer, metrics, updates_per_epoch=3)
    first_drop = 2 + patience + 1  # the epoch after the (patience + 1)-th flat one
    assert lrs[:first_drop] == [pytest.approx(0.1)] * first_drop
    assert lrs[first_drop] == pytest.approx(0.05)
    assert lrs[first_drop + patience + 1:] == [pytest.approx(0.025)] * (len(lrs) - first_drop - patience - 1)
    schedule.step(len(metrics) + 1, 0.6)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02)  # MIN_LR, not 0.0125
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.002)  # the backbone's ratio holds


def test_plateau_warms_up_per_update_and_ignores_the_metric_meanwhile():
    optimizer = two_group_optimizer()
    schedule = build_scheduler(plateau_config(patience=0, warmup_epochs=2), optimizer, updates_per_epoch=4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.001)
    schedule.step_update(4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.001 + (0.1 - 0.001) / 2)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"] * 0.1)
    schedule.step(1, 0.1)  # a bad metric during warmup is not counted
    schedule.step_update(8)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    assert schedule.plateau.num_bad_epochs == 0


def test_plateau_state_survives_a_weights_only_checkpoint_and_resumes_exactly():
    metrics = [0.5, 0.4, 0.4, 0.7, 0.6, 0.6, 0.6]
    optimizer = two_group_optimizer()
    whole = run_epochs(build_scheduler(plateau_config(1), optimizer, 2), optimizer, metrics, 2)

    optimizer = two_group_optimizer()
    schedule = build_scheduler(plateau_config(1), optimizer, 2)
    first = run_epochs(schedule, optimizer, metrics[:3], 2)
    buffer = io.BytesIO()
    torch.save({"lr_scheduler": schedule.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    optimizer = two_group_optimizer()
    schedule = build_scheduler(plateau_config(1), optimizer, 2)
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["lr_scheduler"])
    schedule.step_update(6)
    rest = run_epochs(schedule, optimizer, metrics[3:], 2, start=3)
    assert first + rest == pytest.approx(whole)
    assert len(set(whole)) > 1


def test_unknown_schedule_is_an_error_that_names_plateau():
    with pytest.raises(ValueError, match="'nope' is not a timm schedule .* or plateau"):
        config = get_default_config()
        config.merge_from_list(["TRAIN.LR_SCHEDULER.NAME", "nope"])
        build_scheduler(config, two_group_optimizer(), 2)


def test_multistep_decays_at_its_milestones_counted_from_the_start_of_training():
    """Warmup epoch 0 (from WARMUP_LR 0), then BASE_LR 1.0; x0.1 at the start of epochs 3 and 5: the table by hand."""
    config = get_default_config()
    config.merge_from_list(["TRAIN.LR_SCHEDULER.NAME", "multistep", "TRAIN.LR_SCHEDULER.MILESTONES", "[3, 5]",
                            "TRAIN.LR_SCHEDULER.DECAY_RATE", "0.1", "TRAIN.BASE_LR", "1.0", "TRAIN.WARMUP_LR", "0.0",
                            "TRAIN.WARMUP_EPOCHS", "1", "TRAIN.EPOCHS", "7"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule, updates_per_epoch = build_scheduler(config, optimizer, 4), 4
    lrs = []
    for epoch in range(7):
        schedule.step_update(epoch * updates_per_epoch)  # the first update of the epoch
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.parametrize("opts, message", [
    (["TRAIN.LR_SCHEDULER.NAME", "multistep"], "multistep needs TRAIN.LR_SCHEDULER.MILESTONES"),
    (["TRAIN.LR_SCHEDULER.MILESTONES", "[10]"], "MILESTONES are for the multistep schedule, not 'cosine'"),
    (["TRAIN.LR_SCHEDULER.NAME", "multistep", "TRAIN.LR_SCHEDULER.MILESTONES", "[20, 10]"], "must be increasing"),
    (["TRAIN.LR_SCHEDULER.NAME", "multistep", "TRAIN.LR_SCHEDULER.MILESTONES", "[300]"], "before TRAIN.EPOCHS"),
])
def test_milestones_are_checked_before_training(opts, message):
    from argparse import Namespace

    from config import get_config

    with pytest.raises(ValueError, match=message):
        get_config(Namespace(opts=opts))


def test_main_with_plateau_halves_the_lr_after_every_epoch_that_did_not_improve(tmp_path):
    tree = make_tree(tmp_path / "tree", {"train": 16, "val": 8})
    opts = ("TRAIN.LR_SCHEDULER.NAME", "plateau", "TRAIN.LR_SCHEDULER.PATIENCE_EPOCHS", "0",
            "TRAIN.LR_SCHEDULER.DECAY_RATE", "0.5", "TRAIN.WARMUP_EPOCHS", "0", "TRAIN.EPOCHS", "4",
            "TRAIN.MIN_LR", "0.0", "TRAIN.BASE_LR", "1e-6")  # too low a rate to improve much: plateaus
    assert main.main(cli(tree, tmp_path / "out", "plateau", *opts)) == 0
    history = pd.read_csv(run_dir(tmp_path / "out", "plateau") / "history.csv")
    lr, metric = history["lr"].to_numpy(), history["macro_f1"].to_numpy()
    for epoch in range(1, len(history)):
        # ReduceLROnPlateau's default: better means above the best so far by a relative 1e-4
        improved = metric[epoch - 1] > metric[:epoch - 1].max(initial=-math.inf) * (1 + 1e-4)
        assert lr[epoch] == pytest.approx(lr[epoch - 1] * (1.0 if improved else 0.5))
    assert lr[-1] < lr[0]
    assert {"train_macro_f1", "train_mAP"} <= set(history.columns)
    assert history[["train_macro_f1", "train_mAP"]].notna().all().all()


def test_train_outputs_score_the_batches_at_the_default_threshold_and_survive_a_checkpoint():
    rng = np.random.default_rng(0)
    targets = (rng.random((20, 6)) < 0.4).astype(np.float32)
    targets[0] = 1  # every class has a positive
    logits = torch.from_numpy(rng.normal(size=(20, 6)).astype(np.float32)) + torch.from_numpy(targets) * 1.5
    outputs = TrainOutputs()
    outputs.add(logits[:7], torch.from_numpy(targets[:7]))
    buffer = io.BytesIO()
    torch.save(outputs.state_dict(), buffer)
    buffer.seek(0)
    resumed = TrainOutputs.from_state(torch.load(buffer, weights_only=True))
    resumed.add(logits[7:], torch.from_numpy(targets[7:]))
    probs = torch.sigmoid(logits).numpy()
    expected_f1 = f1_score(targets, probs >= 0.5, average="macro", zero_division=0)
    expected_map = average_precision_score(targets, probs, average="macro")
    expected_exact = accuracy_score(targets, probs >= 0.5)  # subset accuracy: all six labels right
    assert resumed.metrics() == {"train_macro_f1": pytest.approx(expected_f1), "train_mAP": pytest.approx(expected_map),
                                 "train_exact_match": pytest.approx(expected_exact)}
    assert all(math.isnan(v) for v in TrainOutputs().metrics().values())
    assert TrainOutputs.from_state(TrainOutputs().state_dict()).probs == []
