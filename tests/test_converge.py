"""The hybrid-training experiment: its table arithmetic, and a shortened run through the subprocesses."""

from __future__ import annotations

import json

from training.converge import ap_at_cpu, cpu_marks, main, steps_to_reach, table


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


def test_ap_against_cpu_time_compares_arms_at_equal_cpu_not_equal_steps():
    def run(arm, seed, ap, cpu):
        return {"model": "conditional_detr", "arm": arm, "seed": seed, "ap": ap, "cpu_s": cpu, "steps_per_epoch": 50,
                "ms_per_step": 100.0, "peak_mb": 900, "device": "cpu"}

    # co-detr gains more per step but each step costs twice the CPU
    runs = [run("baseline", 0, [0.1, 0.2, 0.3, 0.4], [60, 120, 180, 240]),
            run("baseline", 1, [0.1, 0.2, 0.3, 0.5], [60, 120, 180, 240]),
            run("co-detr", 0, [0.3, 0.35], [120, 240]), run("co-detr", 1, [0.3, 0.45], [120, 240])]
    assert ap_at_cpu(runs[2], 119) is None and ap_at_cpu(runs[2], 120) == 0.3 and ap_at_cpu(runs[2], 200) == 0.3
    assert cpu_marks(runs, 2) == [120.0, 240.0]
    text = table(runs)
    rows = {line.split("|")[1].strip(): line for line in text.split("AP against training CPU time")[1].splitlines()
            if line.startswith("| ")}
    assert rows["baseline"].startswith("| baseline | 0.200 ± 0.000 |") and rows["baseline"].endswith("| 0.450 ± 0.050 |")
    assert rows["co-detr"].startswith("| co-detr | 0.300 ± 0.000 |")
    assert "0.400 ± 0.050" in rows["co-detr"]
    assert "baseline leads co-detr by +0.050 AP (within the seeds' spread" in text


def test_a_shortened_experiment_runs_each_arm_as_its_own_process(tmp_path, capsys):
    code = main(["--models", "conditional_detr", "--arms", "baseline", "co-detr", "--seeds", "0", "--epochs", "1",
                 "--images", "8", "--eval-images", "4", "--batch-size", "4", "--out", str(tmp_path)])
    assert code == 0
    runs = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*.json"))]
    assert [r["arm"] for r in runs] == ["baseline", "co-detr"]
    assert all(len(r["ap"]) == 1 and r["steps"] == 2 and r["peak_mb"] > 0 for r in runs)
    assert "| co-detr |" in (tmp_path / "table.md").read_text()
    assert all(len(r["cpu_s"]) == 1 and r["cpu_s"][0] > 0 for r in runs)


def test_a_cpu_budget_stops_each_run_at_the_first_epoch_past_it(tmp_path):
    code = main(["--models", "conditional_detr", "--arms", "baseline", "--seeds", "0", "--epochs", "5",
                 "--images", "8", "--eval-images", "4", "--batch-size", "4", "--cpu-minutes", "0.0001",
                 "--out", str(tmp_path)])
    assert code == 0
    run = json.loads((tmp_path / "runs" / "conditional_detr-baseline-0.json").read_text())
    assert run["steps"] == 2 and len(run["ap"]) == 1 and run["init"] == "encoder"
    assert "AP against training CPU time" in (tmp_path / "table.md").read_text()
