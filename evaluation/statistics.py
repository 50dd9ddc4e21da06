"""Statistics over runs: how sure a difference is. Student-t intervals of the mean over seeds, a paired
bootstrap of two models' decisions on the same leaves, and the seed-paired tables and figure of
``scripts/experiments.py`` (the same seeds with and without a change, so the seed's own luck cancels).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from evaluation.metrics import SUMMARY_ROWS
from evaluation.reports import markdown_table
from utils.figures import png_bytes


def mean_confidence_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the Student-t confidence interval of the mean of ``values``.

    What several seeds of one setting allow: ``mean +- half-width`` covers the true mean score of
    the setting with probability ``confidence`` (for roughly normal scores). One value has no
    spread to measure: its half-width is nan.
    """
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        raise ValueError("no values to average")
    if len(values) == 1:
        return float(values[0]), float("nan")
    sem = values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(stats.t.ppf((1 + confidence) / 2, len(values) - 1) * sem)


def paired_bootstrap(true: np.ndarray, a: np.ndarray, b: np.ndarray, resamples: int = 2000,
                     seed: int = 0) -> pd.DataFrame:
    """Macro-, micro- and samples-F1 of decisions A and B on the same leaves, each with its 95% interval
    (``a_low``/``a_high``, ``b_low``/``b_high``), and A - B with its own (``low``/``high``).

    The leaves are resampled with replacement, the same resample for A and B; an interval of A - B that
    holds 0 is inside the noise (``outside_noise`` False).
    """
    from sklearn.metrics import f1_score

    def f1(rows_: np.ndarray | slice, pred: np.ndarray, average: str) -> float:
        return float(f1_score(true[rows_], pred[rows_], average=average, zero_division=0))

    draws = np.random.default_rng(seed).integers(0, len(true), (resamples, len(true)))
    rows = []
    for average in SUMMARY_ROWS:
        scores_a = np.array([f1(i, a, average) for i in draws])
        scores_b = np.array([f1(i, b, average) for i in draws])
        (a_low, a_high), (b_low, b_high) = np.percentile(scores_a, [2.5, 97.5]), np.percentile(scores_b, [2.5, 97.5])
        low, high = np.percentile(scores_a - scores_b, [2.5, 97.5])
        all_a, all_b = f1(slice(None), a, average), f1(slice(None), b, average)
        rows.append({"f1": average, "a": all_a, "a_low": a_low, "a_high": a_high, "b": all_b, "b_low": b_low,
                     "b_high": b_high, "a_minus_b": all_a - all_b, "low": low, "high": high,
                     "outside_noise": bool(low > 0 or high < 0)})
    return pd.DataFrame(rows)


# (column of a run's scores, how tables and figures name it)
SEED_METRICS = (("macro_f1", "macro-F1"), ("micro_f1", "micro-F1"), ("samples_f1", "samples-F1"), ("mAP", "mAP"))


def seed_metrics(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The SEED_METRICS that ``frame`` has (results recorded before samples-F1 lack it)."""
    return [(column, name) for column, name in SEED_METRICS if column in frame]


def seeds_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per ``config`` of ``runs`` (first-seen order): its number of runs, then the mean and the
    95% Student-t half-width of each of SEED_METRICS (``<metric>`` and ``<metric>_ci95``)."""
    rows = []
    for config, group in runs.groupby("config", sort=False):
        row = {"config": config, "runs": len(group)}
        for column, _ in seed_metrics(runs):
            row[column], row[f"{column}_ci95"] = mean_confidence_interval(group[column])
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_pm(mean: float, half: float) -> str:
    return f"{mean:.3f}" if np.isnan(half) else f"{mean:.3f} ± {half:.3f}"


def seeds_markdown(summary: pd.DataFrame) -> str:
    """The summary as a markdown table: ``mean ± half-width`` of the 95% confidence interval."""
    cells = {name: [_mean_pm(m, h) for m, h in zip(summary[column], summary[f"{column}_ci95"])]
             for column, name in seed_metrics(summary)}
    return markdown_table(pd.DataFrame({"config": [f"`{c}`" for c in summary["config"]],
                                        "runs": summary["runs"], **cells}))


# what a paired table compares besides SEED_METRICS: the best epoch's validation score
PAIRED_METRICS = SEED_METRICS + (("val_macro_f1_tuned", "val macro-F1"),)


def paired_by_seed(runs: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """One row per ``config`` of ``runs``: ``pairs`` (its seeds that ``baseline`` also ran), then per metric the
    mean over those seeds of run minus baseline run of the same seed, with its 95% Student-t half-width.

    Why pairs: a seed fixes the initialisation and the batch order, so the difference between two settings
    at the same seed varies much less than either score does; the interval of the mean difference is what
    says whether one setting is ahead. ``baseline`` holds one setting's runs (one row per seed).
    """
    base = baseline.set_index("seed")
    metrics = [(column, name) for column, name in PAIRED_METRICS if column in runs and column in baseline]
    rows = []
    for config, group in runs.groupby("config", sort=False):
        group = group.set_index("seed")
        seeds = group.index.intersection(base.index)
        row = {"config": config, "pairs": len(seeds)}
        for column, _ in metrics:
            differences = (group.loc[seeds, column] - base.loc[seeds, column]).to_numpy()
            row[column], row[f"{column}_ci95"] = (mean_confidence_interval(differences) if len(seeds)
                                                  else (float("nan"), float("nan")))
        rows.append(row)
    return pd.DataFrame(rows)


def _difference_pm(mean: float, half: float) -> str:
    """``+0.012 ± 0.020``, bold where the interval leaves out 0 (outside the noise)."""
    if np.isnan(mean):
        return ""
    if np.isnan(half):
        return f"{mean:+.3f}"
    text = f"{mean:+.3f} ± {half:.3f}"
    return f"**{text}**" if abs(mean) > half else text


def paired_markdown(paired: pd.DataFrame) -> str:
    """``paired_by_seed``'s table in markdown, its ``config`` column as the row names."""
    cells = {name: [_difference_pm(m, h) for m, h in zip(paired[column], paired[f"{column}_ci95"])]
             for column, name in PAIRED_METRICS if column in paired}
    return markdown_table(pd.DataFrame({"difference": paired["config"], "pairs": paired["pairs"], **cells}))


def seeds_png(runs: pd.DataFrame, summary: pd.DataFrame) -> bytes:
    """One panel per metric: each run as a dot, each config's mean with its 95% confidence interval as a bar."""
    from matplotlib.figure import Figure

    configs, metrics = list(summary["config"]), seed_metrics(summary)
    fig = Figure(figsize=(4.5 * len(metrics), 1.5 + 0.6 * len(configs)), tight_layout=True)
    for ax, (column, name) in zip(fig.subplots(1, len(metrics), sharey=True), metrics):
        for y, config in enumerate(configs):
            scores = runs.loc[runs["config"] == config, column]
            ax.plot(scores, np.full(len(scores), y + 0.15), "o", color="grey", alpha=0.7, markersize=4)
            row = summary.iloc[y]
            half = 0.0 if np.isnan(row[f"{column}_ci95"]) else row[f"{column}_ci95"]
            ax.errorbar(row[column], y, xerr=half, fmt="s", color="C0", capsize=4)
        ax.set_title(f"test {name}: runs (dots), mean ± 95% CI")
        ax.set_yticks(range(len(configs)), configs)
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
    return png_bytes(fig)
