"""The benchmark scripts still run and their parity checks hold (never a speed: that is what they measure)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"bench", "device", "ours", "baseline", "unit", "speedup", "parity"}


@pytest.mark.parametrize("script", ["preprocess.py", "matcher.py", "detect_cpu.py", "inference_gpu.py", "train_step.py",
                                    "allocator.py"])
def test_quick_run_prints_json_with_parity(script):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick"], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines and all(KEYS <= set(line) and line["parity"] is True for line in lines)
    assert run.stdout.splitlines()[-1].startswith("{")  # the JSON lines come last


def test_bundled_model_bench_compares_two_models_side_by_side(tmp_path):
    """The committed bundled model against itself: both rows come back with their sizes and weights."""
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "bundled_model.py"), "--quick"], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [line["engine"] for line in lines] == ["torch"]
    size = (ROOT / "assets" / "bundled" / "model.safetensors").stat().st_size / 2**20
    assert lines[0]["weights_mb"] == pytest.approx(size) == pytest.approx(lines[0]["baseline_weights_mb"])
    assert KEYS <= set(lines[0]) and lines[0]["ours"] > 0 and lines[0]["baseline"] > 0
