"""`core.allocator.keep_freed_memory`: sets glibc's thresholds, and leaves the user's own settings alone."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from core.allocator import keep_freed_memory


@pytest.mark.parametrize("name, value", [
    ("MALLOC_MMAP_THRESHOLD_", "131072"),  # the user chose glibc's threshold themselves
    ("MALLOC_TRIM_THRESHOLD_", "0"),
    ("GLIBC_TUNABLES", "glibc.malloc.arena_max=2"),  # tunables in glibc's own syntax
])
def test_user_settings_win(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert keep_freed_memory() is False


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_sets_both_thresholds_on_glibc():
    # In a child process, so this test process keeps whatever it had.
    code = "from core.allocator import keep_freed_memory; print(keep_freed_memory())"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1], env={"PATH": "/usr/bin:/bin", "PYTHONPATH": "."})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "True"
