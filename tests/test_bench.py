"""The benchmark scripts still run and their parity checks hold (never a speed: that is what they measure)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"bench", "device", "ours", "baseline", "unit", "speedup", "parity"}


@pytest.mark.parametrize("script", ["preprocess.py", "matcher.py", "detect_cpu.py", "inference_gpu.py", "train_step.py"])
def test_quick_run_prints_json_with_parity(script):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick"], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines and all(KEYS <= set(line) and line["parity"] is True for line in lines)
    assert run.stdout.splitlines()[-1].startswith("{")  # the JSON lines come last
