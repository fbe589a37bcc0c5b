"""Timing and device naming shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def timed(function: Callable, repeats: int, device: torch.device = torch.device("cpu"), warmup: bool = False):
    """``(median seconds, last result)`` of ``repeats`` calls, synchronizing CUDA around each."""
    if warmup:
        function()
    times, result = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def device_label(device: torch.device) -> str:
    """The GPU's name, or ``cpu (N threads)``: what every result row records."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
