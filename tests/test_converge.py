"""The hybrid-training experiment: its table arithmetic, and a shortened run through the subprocesses."""

from __future__ import annotations

import json

from training.converge import main, steps_to_reach, table


def test_steps_to_reach_counts_whole_epochs_and_says_never():
    assert steps_to_reach([0.1, 0.3, 0.5], 0.3, 100) == 200
    assert steps_to_reach([0.1, 0.3, 0.5], 0.05, 100) == 100
    assert steps_to_reach([0.1, 0.2], 0.3, 100) is None


def test_table_compares_arms_with_the_baselines_final_ap():
    def run(arm, seed, ap):
        return {"model": "detr", "arm": arm, "seed": seed, "ap": ap, "steps_per_epoch": 50, "ms_per_step": 100.0,
                "peak_mb": 900, "device": "cpu"}

    text = table([run("baseline", 0, [0.1, 0.2, 0.3]), run("baseline", 1, [0.1, 0.2, 0.5]),
                  run("co-detr", 0, [0.2, 0.4, 0.5]), run("co-detr", 1, [0.2, 0.4, 0.6]),
                  run("h-detr", 0, [0.0, 0.1, 0.2])])
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "0.100 0.200 0.400" in rows["baseline"] and "| 150 |" in rows["baseline"]  # mean of seeds; reached at the end
    assert "| 100 |" in rows["co-detr"]  # 0.4 (mean) at epoch 2 reaches the baseline's 0.4
    assert "not in 150" in rows["h-detr"]


def test_a_shortened_experiment_runs_each_arm_as_its_own_process(tmp_path, capsys):
    code = main(["--models", "conditional_detr", "--arms", "baseline", "co-detr", "--seeds", "0", "--epochs", "1",
                 "--images", "8", "--eval-images", "4", "--batch-size", "4", "--out", str(tmp_path)])
    assert code == 0
    runs = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*.json"))]
    assert [r["arm"] for r in runs] == ["baseline", "co-detr"]
    assert all(len(r["ap"]) == 1 and r["steps"] == 2 and r["peak_mb"] > 0 for r in runs)
    assert "| co-detr |" in (tmp_path / "table.md").read_text()
