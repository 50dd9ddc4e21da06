"""The run directory's layout (rundir.RunDir), and the one prediction loop that validation and inference share."""
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from config import get_config
from evaluation.inference import predict_logits
from models import build_loss, build_model
from training.engine import evaluate
from training.rundir import RunDir, onnx_file


def test_run_dir_of_a_config_and_of_a_checkpoint():
    config = get_config(Namespace(opts=["OUTPUT", "out", "MODEL.NAME", "net", "TAG", "t1"]))
    run = RunDir.of(config)
    assert run.path == Path("out/net/t1") and RunDir.of_checkpoint(run.best_checkpoint) == run
    names = {path.name for path in (run.config_file, run.history, run.curves, run.latest_checkpoint,
                                    run.previous_checkpoint, run.best_checkpoint, run.thresholds(),
                                    run.thresholds(tta=True), run.eval_metrics, run.epoch_checkpoint(4))}
    assert names == {"config.yaml", "history.csv", "curves.png", "ckpt_latest.pth", "ckpt_latest.prev.pth",
                     "ckpt_best.pth", "thresholds.json", "thresholds_tta.json", "eval_metrics.json",
                     "ckpt_epoch_4.pth"}
    assert [run.split_results("val").name, run.predictions.name, run.cam.name] == ["test_val", "predict", "cam"]
    assert run.split_thresholds("val").name == "thresholds_val.json"
    assert onnx_file(run.best_checkpoint) == Path("out/net/t1/ckpt_best.onnx")


def test_epoch_checkpoints_are_found_on_disk(tmp_path):
    run = RunDir(tmp_path)
    for epoch in (2, 5):
        run.epoch_checkpoint(epoch).write_bytes(b"x")
    run.best_checkpoint.write_bytes(b"x")
    assert sorted(p.name for p in run.epoch_checkpoints()) == ["ckpt_epoch_2.pth", "ckpt_epoch_5.pth"]


def test_validation_and_inference_score_a_model_through_the_same_loop():
    """training.engine.evaluate (validation) and inference.predict_logits give the same logits, in order."""
    config = get_config(Namespace(opts=["MODEL.TYPE", "resnet18", "DATA.IMG_SIZE", "32"]))
    torch.manual_seed(0)
    model = build_model(config).eval()
    images, targets = torch.randn(10, 3, 32, 32), (torch.rand(10, 6) > 0.5).float()
    loader = DataLoader(TensorDataset(images, targets), batch_size=4)
    validation = evaluate(model, loader, build_loss(config), torch.device("cpu"))
    logits, extras = predict_logits(model, loader, torch.device("cpu"))
    np.testing.assert_array_equal(validation.targets, torch.stack(extras).numpy())
    np.testing.assert_allclose(validation.probs, 1 / (1 + np.exp(-logits)), rtol=1e-6)
    with torch.no_grad():
        expected = torch.sigmoid(model(images)).numpy()
    np.testing.assert_allclose(validation.probs, expected, rtol=1e-5, atol=1e-6)
    assert validation.loss == build_loss(config)(torch.from_numpy(logits).float(), targets).item()
