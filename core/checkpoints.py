"""Training checkpoints: safetensors + JSON, written atomically, resumed from the last complete one.

Layout of ``<dir>/checkpoint-<step>/``:

    config.json, model.safetensors   the model, in save_pretrained layout (loadable by core.loading)
    optimizer.safetensors            the optimizer's tensors (moments), flattened
    auxiliary.safetensors            training-only modules outside the model (hybrid branches), if any
    rng.safetensors                  torch's random state (dropout), so a resumed run repeats the
                                     uninterrupted one exactly when no augmentation is used (the
                                     augmentation generator is re-seeded from the resume step)
    state.json                       step, epoch, labels, training config, optimizer param groups,
                                     scheduler state, metrics; written last

A checkpoint is written into a temporary directory and renamed into place, so a crash leaves
either a complete checkpoint or none; `latest_checkpoint` also ignores any directory without
``state.json``. No pickle is read or written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param_id, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param_id}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    directory: str | Path,
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    state: dict[str, Any],
    auxiliary: torch.nn.Module | None = None,
) -> Path:
    """Write ``directory/checkpoint-<state['step']>`` atomically and return its path. ``auxiliary``:
    training-only weights kept beside the model (not part of it), restored by `load_checkpoint`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"checkpoint-{int(state['step']):07d}"
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=directory))
    try:
        model.save_pretrained(tmp)
        tensors, meta = _optimizer_tensors(optimizer)
        save_file(tensors, tmp / "optimizer.safetensors")
        if auxiliary is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in auxiliary.state_dict().items()},
                      tmp / "auxiliary.safetensors")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": rng_state for i, rng_state in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, tmp / "rng.safetensors")
        document = {**state, "optimizer": meta, "scheduler": scheduler.state_dict() if scheduler else None}
        (tmp / "state.json").write_text(json.dumps(document, indent=1, default=str))
        if final.exists():  # the same step written again (e.g. after a resume): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in ``directory``, or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    complete = [
        (int(match.group(1)), path)
        for path in directory.iterdir()
        if (match := CHECKPOINT.match(path.name)) and (path / "state.json").is_file()
    ]
    return max(complete)[1] if complete else None


def load_checkpoint(
    path: str | Path,
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    auxiliary: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Load weights (and optimizer/scheduler state, and ``auxiliary``'s weights) from ``path`` into
    the given objects; return the state."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    if auxiliary is not None and not (path / "auxiliary.safetensors").is_file():
        raise ValueError(f"{path} has no auxiliary.safetensors: it was written by a run without the same "
                         "hybrid training setting; resume with that setting or start a new run.")
    saved = type(model).from_pretrained(path, config=model.config, use_safetensors=True)
    model.load_state_dict(saved.state_dict())
    if auxiliary is not None:
        auxiliary.load_state_dict(load_file(path / "auxiliary.safetensors"))
    if optimizer is not None:
        _restore_optimizer(optimizer, load_file(path / "optimizer.safetensors"), state["optimizer"])
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
    if (path / "rng.safetensors").is_file():
        rng = load_file(path / "rng.safetensors")
        torch.set_rng_state(rng["torch"])
        cuda = [rng[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in rng]
        if cuda and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    return state
