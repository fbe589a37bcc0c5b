"""``python tests/zerogpu_app.py [app flags]``: the app under the real `spaces` package in ZeroGPU mode,
on this machine's CPU-only torch (a script, not a test; tests/test_zerogpu.py starts it).

Set ``SPACES_ZERO_GPU=true`` and ``SPACES_ZERO_DEVICE_API_URL`` (a stand-in of ZeroGPU's device API)
first. Everything of `spaces` runs as on a Space — the torch patches in the main process, the
schedule/allow/release calls, the forked worker, pickled arguments and results — except the one
step a CPU cannot do: the worker's CUDA start-up (`spaces.zero.torch.init` and `move`, which start
CUDA and move packed tensors to it). The CPU build of torch also lacks three CUDA attributes that
`spaces` reads at import; they are filled in as a CPU-only CUDA build would have them.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _cuda_init() -> None:  # what torch._C._cuda_init does where CUDA cannot start
    raise RuntimeError("Torch not compiled with CUDA enabled")


def _is_in_bad_fork() -> bool:  # a module-level function: `spaces` pickles it into a forked checker
    return False


if __name__ == "__main__":
    torch.version.cuda = torch.version.cuda or "12.8"
    if not hasattr(torch._C, "_cuda_init"):
        torch._C._cuda_init = _cuda_init
    torch.cuda._is_in_bad_fork = _is_in_bad_fork
    import spaces  # noqa: F401  (patches torch: is_available() is now true in every thread)
    import spaces.zero.torch as zero_torch

    if not torch.cuda.is_available():
        raise SystemExit("spaces did not start in ZeroGPU mode: set SPACES_ZERO_GPU=true and SPACES_ZERO_DEVICE_API_URL")
    zero_torch.init = lambda nvidia_uuid: None  # the worker's CUDA start-up, skipped on a CPU
    zero_torch.move = lambda callback=None: None
    sys.path.insert(0, str(ROOT))
    sys.argv = [str(ROOT / "app.py"), *sys.argv[1:]]
    runpy.run_path(str(ROOT / "app.py"), run_name="__main__")
