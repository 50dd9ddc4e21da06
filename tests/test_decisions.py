"""Decision rules (evaluation.thresholds.decide), samples-F1 threshold tuning, and scripts/decision_rules.py
on a known oof.csv."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from data.labels import CLASS_INDEX, CLASSES
from evaluation.thresholds import decide, samples_f1, tune_thresholds_for_samples
from helpers import load_script

rules = load_script("scripts/decision_rules.py")
H, S, R = CLASS_INDEX["healthy"], CLASS_INDEX["scab"], CLASS_INDEX["rust"]


def row(**probs: float) -> list[float]:
    return [probs.get(name, 0.0) for name in CLASSES]


def test_decide_under_each_rule_on_hand_made_rows():
    probs = np.array([row(scab=0.3, rust=0.2),             # nothing over 0.5
                      row(healthy=0.9, scab=0.6),          # healthy by the larger margin
                      row(healthy=0.55, scab=0.8, rust=0.7),  # the diseases by the larger margin
                      row(scab=0.7, rust=0.9)])             # two diseases, no healthy
    thresholds = np.full(len(CLASSES), 0.5)
    plain = decide(probs, thresholds)
    assert plain.sum(1).tolist() == [0, 2, 3, 2]
    one = decide(probs, thresholds, "at_least_one")
    assert np.flatnonzero(one[0]).tolist() == [S] and (one[1:] == plain[1:]).all()
    kaggle = decide(probs, thresholds, "kaggle")
    assert np.flatnonzero(kaggle[1]).tolist() == [H]
    assert np.flatnonzero(kaggle[2]).tolist() == [R, S]
    assert (kaggle[3] == plain[3]).all()
    with pytest.raises(ValueError, match="unknown decision rule 'vote'"):
        decide(probs, thresholds, "vote")


def test_samples_f1_matches_scikit_learn():
    rng = np.random.default_rng(0)
    y, p = rng.random((200, 6)) < 0.3, rng.random((200, 6)) < 0.3
    assert samples_f1(y, p) == pytest.approx(f1_score(y, p, average="samples", zero_division=0))


def test_samples_tuning_lowers_the_threshold_a_second_label_needs():
    """Scab is the second label of half the leaves at probability 0.3, while a lone false scab sits at
    0.45 on a few: per-class F1 keeps scab's threshold above the false one's only if that pays for scab alone;
    samples-F1 tuning scores whole label sets and must do at least as well on them."""
    rng = np.random.default_rng(1)
    n = 200
    truths = np.zeros((n, 6), int)
    probs = np.full((n, 6), 0.01) + rng.random((n, 6)) * 0.01
    truths[:, R] = 1
    probs[:, R] = 0.9
    truths[: n // 2, S] = 1
    probs[: n // 2, S] = 0.3
    probs[n // 2: n // 2 + 30, S] = 0.45  # false scab, more confident than the true second labels
    tuned = tune_thresholds_for_samples(truths, probs)
    decided = decide(probs, tuned, "at_least_one")
    assert samples_f1(truths, decided) >= samples_f1(truths, decide(probs, np.full(6, 0.5), "at_least_one"))
    assert tuned[S] <= 0.3  # the 100 true second labels outweigh the 30 false ones


def test_decision_rules_script_scores_each_rule_on_held_out_folds(tmp_path):
    """A fifth of the leaves are right but unsure (their class at 0.25, the rest at most 0.2) while sure
    leaves give other classes up to 0.3: per-class thresholds must sit above 0.25 and leave those leaves
    empty; at_least_one gives them their most probable class, on every held-out fold."""
    rng = np.random.default_rng(2)
    names, folds, probs, true = [], [], [], []
    for i in range(150):
        label = CLASSES[i % 6]
        unsure = i % 5 == 0
        p = rng.random(6) * (0.2 if unsure else 0.3)
        p[CLASS_INDEX[label]] = 0.25 if unsure else 0.9
        names.append(f"{i:03d}.jpg")
        folds.append(i % 3)
        probs.append(p)
        true.append(label)
    frame = pd.DataFrame(probs, columns=list(CLASSES)).assign(image=names, fold=folds, true=true)
    frame.to_csv(tmp_path / "oof.csv", index=False)
    assert rules.main([str(tmp_path / "oof.csv"), "--resamples", "100"]) == 0
    table = pd.read_csv(tmp_path / "decision_rules.csv").set_index(["rule", "f1"])
    assert set(table.index.get_level_values("rule")) == {"thresholds", "at_least_one", "kaggle", "samples_tuned"}
    assert table.loc[("thresholds", "samples"), "score"] < 0.9
    assert table.loc[("at_least_one", "samples"), "score"] > table.loc[("thresholds", "samples"), "score"] + 0.05
    assert table.loc[("at_least_one", "samples"), "folds_won"] == 3
    assert bool(table.loc[("at_least_one", "samples"), "outside_noise"])
    assert table.loc[("thresholds", "samples"), "minus_thresholds"] == 0
    assert "per-class thresholds" in (tmp_path / "decision_rules.md").read_text()


def test_decision_rules_refuses_a_file_that_is_not_an_oof_csv(tmp_path):
    pd.DataFrame({"image": ["a.jpg"], "labels": ["scab"]}).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(ValueError, match=r"x.csv: missing column\(s\) fold, complex, .* \(an oof.csv of "
                                         r"scripts/cv.py\?\)"):
        rules.main([str(tmp_path / "x.csv")])
