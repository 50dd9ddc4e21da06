"""scripts/compare.py: the paired bootstrap of two runs' decisions on the same leaves."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data.labels import CLASSES
from evaluation.oof import read_decisions
from evaluation.statistics import paired_bootstrap
from helpers import load_script

compare = load_script("scripts/compare.py")


def predictions(path, true, predicted):
    names = [f"{i:03d}.jpg" for i in range(len(true))]
    pd.DataFrame({"image": names, "true": true, "predicted": predicted}).to_csv(path, index=False)
    return path


def test_a_run_right_everywhere_is_ahead_of_one_wrong_on_a_third_outside_the_noise(tmp_path):
    true = [CLASSES[i % 6] for i in range(120)]
    wrong = [CLASSES[(i + 1) % 6] if i % 3 == 0 else t for i, t in enumerate(true)]
    a, b = predictions(tmp_path / "a.csv", true, true), predictions(tmp_path / "b.csv", true, wrong)
    _, y, pa = read_decisions(a)
    _, _, pb = read_decisions(b)
    table = paired_bootstrap(y, pa, pb, 300, 0).set_index("f1")
    assert table.loc["micro", "a"] == 1.0 and table.loc["micro", "b"] == pytest.approx(80 / 120)
    assert table["outside_noise"].all() and (table["low"] > 0).all()
    assert (table[["a_low", "a_high"]] == 1.0).all().all()  # right on every resample
    micro_b = table.loc["micro", ["b_low", "b", "b_high"]].to_numpy(dtype=float)
    assert micro_b[0] < micro_b[1] < micro_b[2] and micro_b[2] - micro_b[0] < 0.25  # about +-1.96 * 0.043 around 2/3
    same = paired_bootstrap(y, pa, pa, 300, 0)
    assert (same["a_minus_b"] == 0).all() and not same["outside_noise"].any()
    assert np.allclose(same[["low", "high"]], 0)


def test_compare_refuses_runs_on_different_leaves(tmp_path):
    a = predictions(tmp_path / "a.csv", ["scab"] * 5, ["scab"] * 5)
    b = predictions(tmp_path / "b.csv", ["rust"] * 5, ["scab"] * 5)
    with pytest.raises(ValueError, match="not the same leaves"):
        compare.main([str(a), str(b)])
