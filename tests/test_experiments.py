"""scripts/experiments.py: seeds x configs through main.py and test.py, confidence intervals, stop and restart."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.statistics import (
    mean_confidence_interval,
    paired_by_seed,
    paired_markdown,
    seeds_markdown,
    seeds_png,
    seeds_summary,
)
from helpers import ROOT, TINY_YAML, load_script, make_tree
from utils.errors import EXIT_INTERRUPTED
from utils.runlock import RunLockedError, hold_run_lock

experiments = load_script("scripts/experiments.py")

OPTS = ["TRAIN.BASE_LR", "0.002"]


def test_confidence_interval_on_known_numbers():
    # mean 0.82, sample sd 0.02, standard error 0.02 / sqrt(3); t(0.975, df 2) = 4.3027 from any t table
    assert mean_confidence_interval([0.80, 0.82, 0.84]) == pytest.approx((0.82, 4.3027 * 0.02 / 3 ** 0.5), abs=1e-5)
    # sd of 1..4 = 1.2910, t(0.975, df 3) = 3.1824
    assert mean_confidence_interval([1, 2, 3, 4]) == pytest.approx((2.5, 3.1824 * 1.2910 / 2), abs=1e-3)
    assert mean_confidence_interval([0.7, 0.9], confidence=0.9)[1] == pytest.approx(6.3138 * 0.1, abs=1e-4)
    mean, half = mean_confidence_interval([0.7])
    assert mean == 0.7 and np.isnan(half)
    with pytest.raises(ValueError):
        mean_confidence_interval([])


def test_summary_table_and_plot():
    runs = pd.DataFrame({"config": ["b", "b", "b", "a"], "seed": [0, 1, 2, 0],
                         "macro_f1": [0.80, 0.82, 0.84, 0.7], "micro_f1": [0.9, 0.9, 0.9, 0.6],
                         "mAP": [0.5, 0.6, 0.7, 0.8]})
    summary = seeds_summary(runs)
    assert list(summary["config"]) == ["b", "a"] and list(summary["runs"]) == [3, 1]
    assert summary.loc[0, "macro_f1_ci95"] == pytest.approx(0.04968, abs=1e-5)
    assert summary.loc[0, "micro_f1_ci95"] == 0.0
    text = seeds_markdown(summary)
    assert "| `b` | 3 | 0.820 ± 0.050 | 0.900 ± 0.000 | 0.600 ± 0.248 |" in text
    assert "| `a` | 1 | 0.700 | 0.600 | 0.800 |" in text
    assert seeds_png(runs, summary).startswith(b"\x89PNG")


def test_paired_by_seed_on_known_numbers():
    base = pd.DataFrame({"config": "bce", "seed": [0, 1, 2], "macro_f1": [0.80, 0.85, 0.83],
                         "mAP": [0.90, 0.91, 0.92]})
    # asl: +0.02, +0.01, +0.03 over bce at seeds 0-2 (mean 0.02, sd 0.01); seed 3 has no partner
    asl = pd.DataFrame({"config": "asl", "seed": [0, 1, 2, 3], "macro_f1": [0.82, 0.86, 0.86, 0.99],
                        "mAP": [0.90, 0.90, 0.92, 0.99]})
    paired = paired_by_seed(asl, base)
    assert paired.loc[0, "pairs"] == 3
    assert paired.loc[0, "macro_f1"] == pytest.approx(0.02)
    assert paired.loc[0, "macro_f1_ci95"] == pytest.approx(4.3027 * 0.01 / 3 ** 0.5, abs=1e-5)
    assert paired.loc[0, "mAP"] == pytest.approx(-0.01 / 3)
    assert "val_macro_f1_tuned" not in paired  # neither frame has it
    text = paired_markdown(paired.assign(config=["asl − bce"]))
    # +0.020 ± 0.025 straddles 0 (inside the noise, plain); mAP too
    assert "| asl − bce | 3 | +0.020 ± 0.025 | -0.003 ± 0.014 |" in text
    wide = paired_by_seed(asl.assign(macro_f1=asl["macro_f1"] + 0.1), base)
    assert "**+0.120 ± 0.025**" in paired_markdown(wide)  # the interval leaves out 0: bold


def test_results_pair_every_config_with_the_first_and_with_a_baseline(tmp_path):
    runs = pd.DataFrame({"config": ["bce", "asl"] * 2, "seed": [0, 0, 1, 1], "opts": [[]] * 4,
                         "macro_f1": [0.80, 0.83, 0.82, 0.84], "micro_f1": 0.9, "samples_f1": 0.9, "mAP": 0.9,
                         "val_macro_f1_tuned": 0.9})
    baseline = runs[runs["config"] == "bce"].assign(macro_f1=[0.79, 0.80])
    experiments.write_results(runs, tmp_path, "python scripts/experiments.py ...", baseline, "output/plain")
    text = (tmp_path / "results.md").read_text()
    assert "| `asl` − `bce` | 2 | +0.025 ±" in text
    assert "| `bce` − `bce` of output/plain | 2 | +0.015 ±" in text
    assert "asl` of output/plain" not in text  # no asl runs in the baseline: no row
    with pytest.raises(FileNotFoundError, match="results.csv"):
        experiments.read_baseline(tmp_path / "nowhere")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("experiments")
    tree = make_tree(root / "tree", {"train": 16, "val": 8, "test": 8})
    config = root / "tiny.yaml"
    config.write_text(TINY_YAML)
    return tree, config, root / "out"


def argv(setup, *opts: str) -> list[str]:
    tree, config, out = setup
    return [str(config), "--seeds", "2", "--data-path", str(tree), "--output", str(out), "--opts", *OPTS, *opts]


@pytest.mark.slow
@pytest.mark.timeout(900)  # a runner given 300 s to finish its first run, then both runs
def test_stopped_after_one_run_and_restarted_skips_the_finished_run(setup):
    out = setup[2]
    first, second = (out / "tiny" / f"seed{n}" for n in (0, 1))
    runner = subprocess.Popen([sys.executable, "scripts/experiments.py", *argv(setup)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (first / "experiment.json").is_file():
        assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()[0][-3000:]
        time.sleep(0.2)
    runner.send_signal(signal.SIGTERM)
    output = runner.communicate(timeout=120)[0]
    assert runner.returncode == EXIT_INTERRUPTED, output[-3000:]
    assert not (second / "experiment.json").exists()
    done = (first / "experiment.json").read_bytes()
    trained_log = (first / "log.txt").read_text()

    assert experiments.main(argv(setup)) == 0
    assert (first / "experiment.json").read_bytes() == done and (first / "log.txt").read_text() == trained_log
    assert "tiny seed 0: finished earlier, skipped" in (out / "log.txt").read_text()
    runs = pd.read_csv(out / "results.csv")
    assert runs["seed"].tolist() == [0, 1] and runs["config"].tolist() == ["tiny", "tiny"]
    for folder, row in zip((first, second), runs.itertuples()):
        test = json.loads((folder / "test_test" / "metrics.json").read_text())
        assert test["num_images"] == 8
        assert (row.macro_f1, row.micro_f1, row.mAP) == pytest.approx(
            (test["metrics"]["macro"]["f1"], test["metrics"]["micro"]["f1"], test["metrics"]["macro"]["ap"]))
        thresholds = json.loads((folder / "thresholds.json").read_text())
        assert json.loads((folder / "test_test" / "metrics.json").read_text())["metrics"]["scab"]["threshold"] == \
            pytest.approx(thresholds["scab"])  # scored with the validation-tuned thresholds
    summary = pd.read_csv(out / "summary.csv")
    assert summary["runs"].tolist() == [2]
    assert summary.loc[0, "macro_f1"] == pytest.approx(runs["macro_f1"].mean())
    text = (out / "results.md").read_text()
    assert "scripts/experiments.py" in text and "![test scores per seed](results.png)" in text
    assert (out / "results.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_finished_runs_made_with_other_opts_are_an_error(setup):
    if not (setup[2] / "tiny" / "seed0" / "experiment.json").is_file():
        experiments.main([*argv(setup)[:2], "1", *argv(setup)[3:]])
    with pytest.raises(ValueError, match=r"experiment\.json: made with --opts .*another --output"):
        experiments.main(argv(setup, "TRAIN.EPOCHS", "3"))


def test_runs_go_seed_by_seed_so_an_early_stop_has_every_config(tmp_path):
    plan = experiments.plan
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(TINY_YAML)
    second.write_text(TINY_YAML.replace("NAME: tiny", "NAME: other"))
    order = [(e.config_file.name, e.seed, e.run.path.relative_to(tmp_path).as_posix())
             for e in plan([first, second], 2, tmp_path, OPTS)]
    assert order == [("first.yaml", 0, "tiny/seed0"), ("second.yaml", 0, "other/seed0"),
                     ("first.yaml", 1, "tiny/seed1"), ("second.yaml", 1, "other/seed1")]


def test_configs_sharing_a_run_dir_are_an_error(setup, tmp_path):
    twin = tmp_path / "twin.yaml"
    twin.write_text(TINY_YAML)
    with pytest.raises(ValueError, match="same MODEL.NAME"):
        experiments.main([str(setup[1]), str(twin), "--data-path", str(setup[0]), "--output", str(tmp_path)])


def test_second_runner_on_the_same_output_is_refused_and_writes_nothing(setup, tmp_path):
    """One runner per --output: a second start names the holder and leaves the folder as it was."""
    output = tmp_path / "busy"
    with hold_run_lock(output, "the first runner"):
        before = sorted(p.name for p in output.iterdir())
        with pytest.raises(RunLockedError, match="the first runner"):
            tree, config, _ = setup
            experiments.main([str(config), "--seeds", "1", "--data-path", str(tree), "--output", str(output)])
        assert sorted(p.name for p in output.iterdir()) == before


@pytest.mark.slow
def test_tta_scores_the_test_split_with_flips_and_is_recorded(setup, tmp_path):
    tree, config, _ = setup
    out = tmp_path / "tta"
    args = [str(config), "--seeds", "1", "--data-path", str(tree), "--output", str(out), "--opts", *OPTS]
    assert experiments.main([*args, "--tta"]) == 0
    record = json.loads((out / "tiny" / "seed0" / "experiment.json").read_text())
    test = json.loads((out / "tiny" / "seed0" / "test_test" / "metrics.json").read_text())
    assert record["tta"] is True and test["tta"] is True
    assert record["samples_f1"] == pytest.approx(test["metrics"]["samples"]["f1"])
    assert "Test split with TTA (flips)" in (out / "results.md").read_text()
    with pytest.raises(ValueError, match=r"made with --opts .* and tta True, not .* and False; give these runs"):
        experiments.main(args)
