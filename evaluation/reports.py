"""Reports people look at: metric tables, training curves, per-class heatmaps, PR/ROC curves, confusion
matrices, and the result files of a prediction (predictions.csv, Kaggle's submission.csv).

Figures are drawn on matplotlib ``Figure`` objects (no pyplot state, safe in worker threads) and
returned as PNG bytes, so every caller writes them atomically.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from termcolor import colored

from data.labels import CLASSES, vector_to_labels
from evaluation.metrics import table_text
from evaluation.thresholds import decide
from utils.figures import png_bytes
from utils.files import atomic_write_bytes, atomic_write_text

PREDICTIONS_CSV, SUBMISSION_CSV = "predictions.csv", "submission.csv"


# ---------------------------------------------------------------------------------------------
# Decisions and result files
# ---------------------------------------------------------------------------------------------


def submission_labels(probs: np.ndarray, thresholds: np.ndarray) -> list[str]:
    """Kaggle label strings under the "kaggle" decision rule (``thresholds.decide``): never empty, healthy alone."""
    return [" ".join(vector_to_labels(row)) for row in decide(probs, thresholds, "kaggle")]


def predictions_frame(names: Sequence[str], probs: np.ndarray, thresholds: np.ndarray,
                      targets: np.ndarray | None = None) -> pd.DataFrame:
    """image, the six probabilities, the thresholded labels and (labelled mode) the true labels."""
    frame = pd.DataFrame(probs, columns=list(CLASSES))
    frame.insert(0, "image", list(names))
    frame["predicted"] = [" ".join(vector_to_labels(row)) for row in probs >= thresholds]
    if targets is not None:
        frame["true"] = [" ".join(vector_to_labels(row)) for row in targets]
    return frame


def submission_frame(names: Sequence[str], probs: np.ndarray, thresholds: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"image": list(names), "labels": submission_labels(probs, thresholds)})


def write_file_predictions(frame: pd.DataFrame, thresholds: np.ndarray, folder: Path) -> None:
    """predictions.csv and submission.csv of photos predicted without labels (``evaluation.predict_files``)."""
    atomic_write_text(frame.to_csv(index=False), folder / PREDICTIONS_CSV)
    probs = frame[list(CLASSES)].to_numpy(dtype=np.float64)
    write_submission(frame["image"], probs, thresholds, folder)


def write_submission(names: Sequence[str], probs: np.ndarray, thresholds: np.ndarray, folder: Path) -> None:
    """submission.csv: ``image,labels`` under Kaggle's rules (:func:`submission_labels`)."""
    atomic_write_text(submission_frame(names, probs, thresholds).to_csv(index=False), folder / SUBMISSION_CSV)


def write_split_results(folder: Path, table: pd.DataFrame, names: Sequence[str], targets: np.ndarray,
                        probs: np.ndarray, thresholds: np.ndarray, meta: dict) -> None:
    """predictions.csv, submission.csv, metrics.csv/.json and the figures of a labelled evaluation."""
    predictions = predictions_frame(names, probs, thresholds, targets)
    atomic_write_text(predictions.to_csv(index=False), folder / PREDICTIONS_CSV)
    write_submission(names, probs, thresholds, folder)
    write_report(folder, table, targets, probs, thresholds, meta)


# ---------------------------------------------------------------------------------------------
# Figures and tables
# ---------------------------------------------------------------------------------------------


def training_curves_png(rows: list[dict], best_metric: str) -> bytes:
    """curves.png: train/val loss, validation F1s and mAP (training's dashed) and the learning rate per epoch."""
    from matplotlib.figure import Figure

    frame = pd.DataFrame(rows)
    fig = Figure(figsize=(15, 4), tight_layout=True)
    ax_loss, ax_f1, ax_lr = fig.subplots(1, 3)
    for column in ("train_loss", "val_loss"):
        ax_loss.plot(frame["epoch"], frame[column], marker=".", label=column)
    for column in dict.fromkeys(("macro_f1", "macro_f1_tuned", "micro_f1", "exact_match_tuned", "mAP", best_metric)):
        if column in frame:
            ax_f1.plot(frame["epoch"], frame[column], marker=".", label=column)
    for column in ("train_macro_f1", "train_mAP"):
        if column in frame and frame[column].notna().any():
            ax_f1.plot(frame["epoch"], frame[column], marker=".", linestyle="--", label=column)
    ax_lr.plot(frame["epoch"], frame["lr"], marker=".")
    titles = ((ax_loss, "loss"), (ax_f1, "F1, exact match, mAP (training: dashed)"),
              (ax_lr, "learning rate (end of epoch)"))
    for ax, title in titles:
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_loss.legend()
    ax_f1.legend()
    return png_bytes(fig)


def coloured_table(table: pd.DataFrame) -> str:
    """The metrics table for the console: bold header, summary rows in cyan."""
    header, *lines = table_text(table).splitlines()
    rows = [line if name in CLASSES else colored(line, "cyan") for name, line in zip(table.index, lines)]
    return "\n".join([colored(header, attrs=["bold"]), *rows])


def metrics_json(table: pd.DataFrame, **meta: Any) -> str:
    """The table as {row: {column: value}} (nan -> null), after the run's facts in ``meta``."""
    return json.dumps({**meta, "metrics": json.loads(table.to_json(orient="index"))}, indent=2) + "\n"


def heatmap_png(table: pd.DataFrame) -> bytes:
    """Per-class precision, recall, F1, AP, AUC and accuracy as an annotated heatmap."""
    from matplotlib.figure import Figure

    columns = ["precision", "recall", "f1", "ap", "auc", "accuracy"]
    values = table.loc[list(CLASSES) + ["macro"], columns].to_numpy(dtype=float)
    fig = Figure(figsize=(8, 5), tight_layout=True)
    ax = fig.subplots()
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(values)), list(CLASSES) + ["macro"])
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                color="black" if v > 0.6 else "white")
    fig.colorbar(image, ax=ax)
    ax.set_title("per-class metrics at the decision thresholds")
    return png_bytes(fig)


BAR_METRICS = ("precision", "recall", "f1", "ap")  # the bars of metrics_bars.png, per class
AVERAGE_LINES = {"macro": ("-", "black"), "micro": ("--", "purple"), "samples": (":", "saddlebrown")}  # F1 lines


def class_bars_png(table: pd.DataFrame) -> bytes:
    """metrics_bars.png: per-class precision, recall, F1 and AP as grouped bars (support under each class), with
    the macro, micro and samples F1 as lines across."""
    return png_bytes(class_bars_figure(table))


def class_bars_figure(table: pd.DataFrame) -> Any:
    """The matplotlib Figure of :func:`class_bars_png` (one bar container per metric of BAR_METRICS)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(BAR_METRICS)
    x = np.arange(len(CLASSES))
    for i, metric in enumerate(BAR_METRICS):
        values = table.loc[list(CLASSES), metric].to_numpy(dtype=float)
        bars = ax.bar(x + (i - (len(BAR_METRICS) - 1) / 2) * width, np.nan_to_num(values), width, label=metric)
        ax.bar_label(bars, labels=["-" if np.isnan(v) else f"{v:.2f}" for v in values], fontsize=6)
    for row, (style, colour) in AVERAGE_LINES.items():
        if row in table.index and not np.isnan(table.loc[row, "f1"]):
            ax.axhline(table.loc[row, "f1"], color=colour, linestyle=style, linewidth=1.2,
                       label=f"{row} F1 {table.loc[row, 'f1']:.3f}")
    support = table.loc[list(CLASSES), "support"].astype(int)
    ax.set_xticks(x, [f"{name}\n({n} positive)" for name, n in zip(CLASSES, support)])
    ax.set(ylim=(0, 1.08), ylabel="score", title="Per-class scores at the decision thresholds")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return fig


def class_curves_png(targets: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, kind: str) -> bytes:
    """One PR (``kind='pr'``) or ROC (``kind='roc'``) curve per class, the decision threshold marked."""
    from matplotlib.figure import Figure
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    fig = Figure(figsize=(13, 8), tight_layout=True)
    for ax, c, name in zip(fig.subplots(2, 3).flat, range(len(CLASSES)), CLASSES):
        y, p = targets[:, c], probs[:, c]
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if y.min() == y.max():
            ax.text(0.5, 0.5, "undefined: one kind of truth only", ha="center", transform=ax.transAxes)
            continue
        pred = p >= thresholds[c]
        if kind == "pr":
            precision, recall, _ = precision_recall_curve(y, p)
            ax.plot(recall, precision, label=f"AP {average_precision_score(y, p):.3f}")
            point = (pred[y > 0].mean(), y[pred].mean() if pred.any() else 1.0)
            ax.set(xlabel="recall", ylabel="precision")
        else:
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(y, p):.3f}")
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
            point = (pred[y == 0].mean(), pred[y > 0].mean())
            ax.set(xlabel="false positive rate", ylabel="true positive rate")
        ax.plot(*point, "o", color="red", label=f"threshold {thresholds[c]:.2f}")
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        ax.legend(loc="lower left" if kind == "pr" else "lower right")
    return png_bytes(fig)


def confusion_png(targets: np.ndarray, predicted: np.ndarray) -> bytes:
    """Per-class 2x2 confusion matrices (rows: truth, columns: prediction)."""
    from matplotlib.figure import Figure
    from sklearn.metrics import multilabel_confusion_matrix

    matrices = multilabel_confusion_matrix(targets, predicted, labels=list(range(len(CLASSES))))
    fig = Figure(figsize=(12, 7), tight_layout=True)
    for ax, matrix, name in zip(fig.subplots(2, 3).flat, matrices, CLASSES):
        ax.imshow(matrix, cmap="Blues")
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, str(v), ha="center", va="center", color="black" if v < matrix.max() / 2 else "white")
        ax.set_xticks([0, 1], ["no", "yes"])
        ax.set_yticks([0, 1], ["no", "yes"])
        ax.set(title=name, xlabel="predicted", ylabel="true")
    return png_bytes(fig)


def write_report(folder: Path, table: pd.DataFrame, targets: np.ndarray, probs: np.ndarray,
                 thresholds: np.ndarray, meta: dict) -> None:
    """metrics.csv/.json and the five figures of a labelled evaluation."""
    atomic_write_text(table.to_csv(index_label="row"), folder / "metrics.csv")
    atomic_write_text(metrics_json(table, **meta), folder / "metrics.json")
    atomic_write_bytes(heatmap_png(table), folder / "metrics_heatmap.png")
    atomic_write_bytes(class_bars_png(table), folder / "metrics_bars.png")
    atomic_write_bytes(class_curves_png(targets, probs, thresholds, "pr"), folder / "pr_curves.png")
    atomic_write_bytes(class_curves_png(targets, probs, thresholds, "roc"), folder / "roc_curves.png")
    atomic_write_bytes(confusion_png(targets, (probs >= thresholds).astype(int)), folder / "confusion_matrices.png")


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a markdown table (floats with 4 decimals)."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
