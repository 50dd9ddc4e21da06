"""The run directory, OUTPUT/MODEL.NAME/TAG: the name of every file a run and its commands write.

``main.py`` writes ``config.yaml``, ``log.txt``, ``history.csv``, ``curves.png``, ``ckpt_latest.pth``
(every epoch, and mid-epoch on a stop; the one it replaced stays as ``ckpt_latest.prev.pth``),
``ckpt_best.pth`` + ``thresholds.json`` (best TRAIN.BEST_METRIC on validation), ``thresholds_tta.json``
(the best checkpoint's, tuned on validation with TTA, at the end) and ``ckpt_epoch_N.pth`` every
SAVE_FREQ epochs. The other commands put their results in folders of it: ``test_<split>/``
(test.py on a split), ``predict/`` (test.py --images), ``cam/`` (visual.py); export.py writes the
checkpoint's ``.onnx`` beside it.
"""
from __future__ import annotations

import argparse
import re
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunDir:
    """The files of one run; ``path`` is the folder itself."""

    path: Path

    @classmethod
    def of(cls, config: Any) -> "RunDir":
        """The run dir of a config: OUTPUT/MODEL.NAME/TAG, or OUTPUT/MODEL.NAME/TAG-fold<k> for fold k."""
        fold = config.DATA.FOLD
        return cls(Path(config.OUTPUT) / config.MODEL.NAME / (config.TAG + (f"-fold{fold}" if fold >= 0 else "")))

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> "RunDir":
        """The run a model file (checkpoint or .onnx) belongs to: its folder."""
        return cls(Path(checkpoint).parent)

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def model_file(self) -> Path:
        """The module tree of the run's model (``print(model)``, as the fork logs it)."""
        return self.path / "model.txt"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def latest_checkpoint(self) -> Path:
        return self.path / "ckpt_latest.pth"

    @property
    def previous_checkpoint(self) -> Path:
        """The ckpt_latest.pth that the current one replaced: the fallback should it be unreadable."""
        return self.path / "ckpt_latest.prev.pth"

    @property
    def best_checkpoint(self) -> Path:
        return self.path / "ckpt_best.pth"

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.path / f"ckpt_epoch_{epoch}.pth"

    def epoch_checkpoints(self) -> list[Path]:
        """The ``ckpt_epoch_N.pth`` files (SAVE_FREQ) in epoch order."""
        found = [path for path in self.path.glob("ckpt_epoch_*.pth") if path.is_file()]
        numbered = [(int(m.group(1)), p) for p in found if (m := re.fullmatch(r"ckpt_epoch_(\d+)\.pth", p.name))]
        return [path for _, path in sorted(numbered)]

    def thresholds(self, tta: bool = False) -> Path:
        """The best checkpoint's thresholds tuned on validation (with TTA: on flip-averaged predictions)."""
        return self.path / ("thresholds_tta.json" if tta else "thresholds.json")

    def split_thresholds(self, split: str) -> Path:
        """Thresholds tuned on ``split`` by ``test.py --tune-thresholds``."""
        return self.path / f"thresholds_{split}.json"

    @property
    def eval_metrics(self) -> Path:
        """``main.py --eval``'s summary."""
        return self.path / "eval_metrics.json"

    def split_results(self, split: str) -> Path:
        """test.py's folder for a labelled split."""
        return self.path / f"test_{split}"

    @property
    def best_validation(self) -> Path:
        """main.py's report of ckpt_best.pth on validation at the end of training (test.py's files for a split)."""
        return self.path / "val_best"

    @property
    def predictions(self) -> Path:
        """test.py's folder for ``--images``."""
        return self.path / "predict"

    @property
    def cam(self) -> Path:
        """visual.py's folder."""
        return self.path / "cam"

    @property
    def fold_record(self) -> Path:
        """scripts/cv.py's marker of a finished fold (its checkpoint and held-out predictions)."""
        return self.path / "fold.json"


@dataclass(frozen=True)
class CvDir:
    """The pooled results of folds: scripts/cv.py's OUTPUT/MODEL.NAME/TAG-cv, and the --output of
    scripts/blend.py and scripts/pool_folds.py; every file name of it in one place."""

    path: Path

    @property
    def oof(self) -> Path:
        """Every pooled leaf: its fold, its out-of-fold probabilities, its labels."""
        return self.path / "oof.csv"

    @property
    def test_predictions(self) -> Path:
        """The members' test probabilities averaged (scripts/pool_folds.py)."""
        return self.path / "test.csv"

    @property
    def metrics_json(self) -> Path:
        return self.path / "cv_metrics.json"

    @property
    def metrics_md(self) -> Path:
        """Per fold and pooled, at thresholds tuned on every out-of-fold leaf."""
        return self.path / "cv_metrics.md"

    @property
    def thresholds(self) -> Path:
        """scripts/blend.py's thresholds, tuned on the blend's out-of-fold probabilities."""
        return self.path / "thresholds.json"

    @property
    def samples_thresholds(self) -> Path:
        """Thresholds tuned for samples-F1 of leaves that always get a label."""
        return self.path / "thresholds_samples.json"

    @property
    def ensemble(self) -> Path:
        """The folds' best checkpoints as one model, with the out-of-fold thresholds."""
        return self.path / "ensemble.json"


def onnx_file(checkpoint: Path) -> Path:
    """export.py's default output for a checkpoint: the same path as ``.onnx``."""
    return Path(checkpoint).with_suffix(".onnx")


def add_run_arguments(parser: argparse.ArgumentParser, fork_alias: bool = False) -> None:
    """The options that find a trained run and its checkpoint (test.py, visual.py, export.py, app.py);
    ``fork_alias``: also accept ``--resume FILE``, the upstream fork's name for it (test.py only)."""
    parser.add_argument("--cfg", metavar="FILE", help="config of the run (finds OUTPUT/MODEL.NAME/TAG)")
    parser.add_argument("--opts", nargs="+", default=None, help="KEY VALUE pairs overriding --cfg")
    parser.add_argument("--tag", help="run tag (default: the config's TAG)")
    names = ("--checkpoint", "--resume") if fork_alias else ("--checkpoint",)
    parser.add_argument(*names, dest="checkpoint", type=Path, help="checkpoint file (default: the run's ckpt_best.pth)"
                        + ("; --resume is the upstream fork's name for it" if fork_alias else ""))


def find_checkpoint(args: Namespace) -> Path:
    """``args.checkpoint``, else the best checkpoint of the run named by ``args.cfg``/``opts``/``tag``."""
    from config import get_config

    if args.checkpoint:
        return Path(args.checkpoint)
    config = get_config(Namespace(cfg=args.cfg, opts=args.opts, tag=args.tag))
    path = RunDir.of(config).best_checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint (train with main.py first, or give --checkpoint FILE)")
    return path
