"""The training loop: one readable loop for CPU, one GPU, or several processes under Accelerate.

    result = train(model, dataset, TrainConfig(epochs=10), progress=print)

- AdamW with a lower backbone learning rate, weight decay, gradient clipping; the whole model or
  only part of it trains (``trainable``: all, transformer, decoder, last_layer, heads); bf16 autocast
  (through Accelerate), channels-last and fused AdamW on CUDA; fp32 on CPU.
- ``branch``: Co-DETR's or H-DETR's one-to-many branch (`core.hybrid.build_branch`) beside the
  model, trained with it, kept in checkpoints, never part of the model: what is saved is the
  plain detector.
- A non-finite loss skips the step; ``max_nonfinite`` in a row stop training with the step named.
- ``progress`` gets a `Progress` every ``log_every`` steps; ``cancel`` (a `threading.Event`) is
  checked before every step.
- Checkpoints (`core.checkpoints`) every ``checkpoint_every`` steps and at the end; ``resume``
  continues from the last complete one at the right step.
- Under ``accelerate launch`` / ``torchrun`` each process trains on its shard; DDP averages
  gradients, so all ranks hold identical weights.

The dataset yields ``(image [H, W, 3] uint8, target)`` with targets in the transformers contract.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.boxes import box_cxcywhn_hflip
from core.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from core.family import family_of
from core.forward import AllDecoderLayers
from core.copy_paste import copy_paste
from core.loading import PreprocessConfig
from core.losses import criterion_for, validate_targets
from core.preprocess import preprocess

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training settings. The defaults are DETR's (fine-tuning a pretrained model)."""

    epochs: int = 10
    max_steps: int | None = None  # stop earlier than `epochs` (e.g. quick checks)
    batch_size: int = 4  # per process
    lr: float = 1e-4
    lr_backbone: float = 1e-5
    box_lr_scale: float = 1.0  # the box head (bbox_predictor) learns at lr x this
    weight_decay: float = 1e-4
    grad_clip: float = 0.1  # max gradient norm; 0 disables clipping
    schedule: str = "constant"  # or "cosine" (decays to 1% of lr), both after `warmup_steps`
    warmup_steps: int = 0
    trainable: str = "all"  # "all", "transformer" (backbone frozen), "decoder" (and heads), "last_layer" (the
    # decoder's last layer and the heads), "heads" (class + box)
    freeze_stem: bool = True  # DETR's choice for a pretrained ResNet: stem and first stage stay fixed
    shortest_edge: int | None = None  # None: the model's own (its preprocessing config's)
    longest_edge: int | None = None  # None: scaled with shortest_edge as the model's own pair
    scale_jitter: Sequence[float] = ()  # e.g. (0.75, 0.875, 1.0): per-batch factors on shortest_edge
    hflip: float = 0.0  # probability of a horizontal flip per image
    copy_paste: float = 0.0  # probability per image of pasting objects of another image of the batch (core.copy_paste)
    copy_paste_objects: int = 3  # at most this many pasted per image
    copy_paste_blend: bool = True  # cut objects out of a plain background instead of pasting their boxes whole
    one_to_many: int = 0  # H-DETR hybrid layers: repeat targets this often for early layers (0 = off)
    one_to_many_layers: int = 0
    class_weight: float | None = None  # None: the model family's (DETR 1, Conditional DETR 2)
    seed: int = 0
    # How a run reports and keeps itself, set by the program that runs it (not command-line flags).
    log_every: int = field(default=10, metadata={"flag": False})
    checkpoint_dir: str | None = field(default=None, metadata={"flag": False})
    checkpoint_every: int = field(default=0, metadata={"flag": False})  # steps; 0 = only at the end
    resume: bool = field(default=True, metadata={"flag": False})
    max_nonfinite: int = field(default=3, metadata={"flag": False})

    def sizes(self, preprocess: PreprocessConfig) -> tuple[int, int]:
        """``(shortest, longest)`` edge to train at: the settings, else the model's own pair."""
        short = self.shortest_edge or preprocess.shortest_edge
        long = self.longest_edge or max(short, round(short * preprocess.longest_edge / preprocess.shortest_edge))
        return short, long


@dataclass
class Progress:
    """What a progress bar or a live plot needs, reported every ``log_every`` steps."""

    step: int
    total_steps: int
    epoch: int
    losses: dict[str, float]
    lr: float
    images_per_s: float
    eta_s: float


@dataclass
class TrainResult:
    status: str  # "finished", "cancelled", "stopped_early", "paused" (budget used up; resume continues)
    step: int
    epoch: int
    last_losses: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    checkpoint_s: float = 0.0  # how long writing the last checkpoint took
    skipped_steps: list[int] = field(default_factory=list)  # steps whose loss was not finite


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss was NaN/inf several steps in a row."""


def _head(name: str) -> bool:
    return name.startswith(("class_labels_classifier.", "bbox_predictor."))


# What trains: (parameter name, index of the decoder's last layer) -> whether it trains.
TRAINABLE: dict[str, Callable[[str, int], bool]] = {
    "all": lambda name, last: True,
    "transformer": lambda name, last: ".backbone." not in f".{name}",
    "decoder": lambda name, last: any(part in name for part in ("decoder", "query", "class_labels", "bbox_predictor")),
    # The last decoder layer (its self-attention is where DETR learns to leave one query per object) and the
    # heads, at a step's cost near "heads". Not the decoder's shared norm: the layers before the last use it
    # too (transformers applies it between layers when training), and they stay as they were.
    "last_layer": lambda name, last: _head(name) or f"decoder.layers.{last}." in name,
    "heads": lambda name, last: _head(name),
}
# The choices that leave everything before the decoder's last layer as the base model had it: hybrid
# branches (which supervise every layer) refuse them, and distillation's teacher shares that trunk.
FROZEN_TRUNK = ("heads", "last_layer")


def trainable_problem(trainable: str) -> str | None:
    """What is wrong with a ``trainable`` value, as a message for the user; None when it is one of
    `TRAINABLE`. One rule for the loop, the fine-tune and the Train tab."""
    if trainable not in TRAINABLE:
        return f"trainable (what trains) must be one of {', '.join(TRAINABLE)}; got {trainable!r}."
    return None


def _parameter_groups(model: nn.Module, config: TrainConfig, extra: nn.Module | None = None) -> list[dict]:
    """AdamW groups; sets ``requires_grad`` from ``config.trainable`` and ``freeze_stem``. ``extra``
    (a hybrid branch) trains whole, at the main learning rate."""
    if problem := trainable_problem(config.trainable):
        raise ValueError(problem)
    backbone, box, rest = [], [], [*(extra.parameters() if extra is not None else [])]
    last = model.config.decoder_layers - 1
    for name, parameter in model.named_parameters():
        stem = ".backbone." in f".{name}" and (".embedder." in name or ".stages.0." in name)
        parameter.requires_grad_(TRAINABLE[config.trainable](name, last) and not (config.freeze_stem and stem))
        if not parameter.requires_grad:
            continue
        if ".backbone." in f".{name}":
            backbone.append(parameter)
        elif config.box_lr_scale != 1.0 and name.startswith("bbox_predictor."):
            box.append(parameter)
        else:
            rest.append(parameter)
    groups = [{"params": rest, "lr": config.lr}]
    if box:
        groups.append({"params": box, "lr": config.lr * config.box_lr_scale})
    if backbone:
        groups.append({"params": backbone, "lr": config.lr_backbone})
    return groups


def _schedule(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "cosine":
            progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    if config.schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {config.schedule!r}.")
    return factor


def epoch_batches(size: int, epoch: int, config: TrainConfig, rank: int, world: int) -> list[list[int]]:
    """This process's batches of dataset indices for ``epoch``: a seeded shuffle, sharded by rank
    (padded so every rank runs the same number of steps)."""
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    order = torch.randperm(size, generator=generator).tolist()
    order += order[: (-len(order)) % world]
    mine = order[rank::world]
    return [mine[i : i + config.batch_size] for i in range(0, len(mine), config.batch_size)]


def _augment(images: list[np.ndarray], targets: list[dict], config: TrainConfig, sizes: tuple[int, int],
             rng: np.random.Generator):
    if config.copy_paste > 0:  # off by default, so the draws below (and resumed runs) stay as they were
        images, targets = copy_paste(images, targets, rng, config.copy_paste, config.copy_paste_objects,
                                     config.copy_paste_blend)
    if config.hflip > 0:
        for i in range(len(images)):
            if rng.random() < config.hflip:
                images[i] = images[i][:, ::-1].copy()
                targets[i] = {**targets[i], "boxes": box_cxcywhn_hflip(targets[i]["boxes"])}
    base_short, base_long = sizes
    short = base_short
    if config.scale_jitter:
        short = max(32, int(round(base_short * float(rng.choice(config.scale_jitter)) / 32) * 32))
    long = round(short * base_long / base_short)
    return images, targets, short, long


def _final_losses(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """The total and the final layer's parts as floats; per-layer parts carry a numeric suffix."""
    return {k: v.item() for k, v in losses.items() if not k.rsplit("_", 1)[-1].isdigit()}


def train(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    config: TrainConfig,
    preprocess_config: PreprocessConfig | None = None,
    labels: list[str] | None = None,
    branch: nn.Module | None = None,
    distill: nn.Module | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    epoch_end: Callable[[int], bool] | None = None,
    budget_s: float | None = None,
    reserve_s: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
) -> TrainResult:
    """Train ``model`` (a transformers DETR or Conditional DETR) in place. See the module docstring.

    ``branch`` (from `core.hybrid.build_branch`) trains beside the model and is checkpointed with it.
    ``distill`` (`core.distill.QueryDistillation`, frozen) adds ``loss_distill`` from the base model.

    ``epoch_end(epoch)`` runs after each complete epoch (e.g. validation); returning True stops
    training there with status ``"stopped_early"``. With ``budget_s`` (e.g. a ZeroGPU call's
    slice) training pauses once the time left would not hold one more step (the longest of this
    call so far) plus ``reserve_s`` (what must still fit after it: an epoch's validation, the
    checkpoint); it writes a checkpoint and returns status ``"paused"``, and calling again with
    ``resume`` continues exactly where it stopped. Every call makes at least one step, so chunks
    always progress. ``clock`` is injectable so tests can simulate budgets.
    """
    if budget_s is not None and not config.checkpoint_dir:
        raise ValueError("a time budget needs a checkpoint_dir to continue from; set TrainConfig.checkpoint_dir.")
    deadline = clock() + budget_s if budget_s is not None else None
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda else "no")
    torch.manual_seed(config.seed)
    labels = labels or [model.config.id2label[i] for i in range(model.config.num_labels)]
    preprocess_config = preprocess_config or PreprocessConfig()
    model.config.auxiliary_loss = True  # every decoder layer's predictions, for the auxiliary losses
    model.train()
    if cuda:
        model.to(memory_format=torch.channels_last)
    family = family_of(model)
    if branch is not None and config.one_to_many > 1:
        raise ValueError("one_to_many (hybrid layers) and a hybrid branch are two forms of one-to-many training; "
                         "use one.")
    criterion = criterion_for(family, len(labels), one_to_many=config.one_to_many,
                              one_to_many_layers=config.one_to_many_layers,
                              **({"class_weight": config.class_weight} if config.class_weight is not None else {}))
    sizes = config.sizes(preprocess_config)
    network = AllDecoderLayers(model, branch)
    optimizer = torch.optim.AdamW(_parameter_groups(model, config, branch), weight_decay=config.weight_decay,
                                  **({"fused": True} if cuda else {}))
    steps_per_epoch = len(epoch_batches(len(dataset), 0, config, accelerator.process_index, accelerator.num_processes))
    total_steps = min(config.max_steps or math.inf, config.epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, total_steps))
    network, optimizer = accelerator.prepare(network, optimizer)

    step = 0
    if config.checkpoint_dir and config.resume and (last := latest_checkpoint(config.checkpoint_dir)):
        step = load_checkpoint(last, model, optimizer, scheduler, branch)["step"]
        logger.info("resumed from %s at step %d", last, step)

    result = TrainResult(status="finished", step=step, epoch=step // max(steps_per_epoch, 1))
    nonfinite_in_a_row, started, images_seen = 0, time.perf_counter(), 0
    longest_step_s, step_started = 0.0, clock() if deadline is not None else 0.0
    device = accelerator.device
    last_good: dict[str, torch.Tensor] = {}  # losses of the last finite step, read out only when needed

    def checkpoint(epoch: int) -> None:
        if last_good:
            result.last_losses = _final_losses(last_good)
        if config.checkpoint_dir and accelerator.is_main_process:
            state = {"step": step, "epoch": epoch, "labels": labels, "kind": family.name, "train_config": asdict(config),
                     "last_losses": result.last_losses}
            writing = time.perf_counter()
            result.checkpoint = save_checkpoint(config.checkpoint_dir, model, optimizer, scheduler, state, branch)
            result.checkpoint_s = time.perf_counter() - writing
        accelerator.wait_for_everyone()

    while step < total_steps:
        epoch = step // steps_per_epoch
        batches = epoch_batches(len(dataset), epoch, config, accelerator.process_index, accelerator.num_processes)
        for indices in batches[step % steps_per_epoch :]:
            if step >= total_steps:
                break
            if cancel is not None and cancel.is_set():
                result.status = "cancelled"
                if last_good:
                    result.last_losses = _final_losses(last_good)
                accelerator.wait_for_everyone()
                return result
            items = [dataset[i] for i in indices]
            images, targets = [np.asarray(item[0]) for item in items], [item[1] for item in items]
            validate_targets(targets, len(labels), where=f"training samples {indices}")
            # Augmentation draws depend only on (seed, step, rank): a resumed run repeats the uninterrupted one.
            rng = np.random.default_rng([config.seed, step, accelerator.process_index])
            images, targets, short, long = _augment(images, targets, config, sizes, rng)
            batch = preprocess(images, preprocess_config, device, short, long)
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            pixel_values = batch.pixel_values.contiguous(memory_format=torch.channels_last) if cuda else batch.pixel_values

            with accelerator.autocast():
                logits, boxes, *extra = network(pixel_values, batch.pixel_mask, targets if branch is not None else None)
            losses = criterion(logits.float(), boxes.float(), targets)
            if branch is not None:
                losses.update(branch.loss(extra[0], targets, criterion))
                losses["loss"] = losses["loss"] + losses["loss_hybrid"]
            if distill is not None:
                with accelerator.autocast():
                    losses.update(distill(pixel_values, batch.pixel_mask, logits[-1], boxes[-1], targets))
                losses["loss"] = losses["loss"] + losses["loss_distill"]
            loss = losses["loss"]
            finite = torch.isfinite(loss.detach()).float()
            if accelerator.num_processes > 1:
                finite = accelerator.reduce(finite, reduction="sum") / accelerator.num_processes
            optimizer.zero_grad(set_to_none=True)
            if finite.item() < 1:
                # One bad batch should not poison the weights: skip it; several in a row mean divergence.
                nonfinite_in_a_row += 1
                result.skipped_steps.append(step)
                logger.warning("non-finite loss at step %d; step skipped", step)
                if nonfinite_in_a_row >= config.max_nonfinite:
                    raise NonFiniteLossError(
                        f"the loss was not finite for {nonfinite_in_a_row} steps in a row, the last at step {step}; "
                        "lower the learning rate or check the data. The last checkpoint is kept."
                    )
                step += 1
                continue
            nonfinite_in_a_row = 0
            accelerator.backward(loss)
            if config.grad_clip > 0:
                accelerator.clip_grad_norm_(network.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            images_seen += len(indices) * accelerator.num_processes
            result.step, result.epoch = step, epoch
            last_good = {k: v.detach() for k, v in losses.items()}
            if progress is not None and (step % config.log_every == 0 or step == total_steps):
                result.last_losses = _final_losses(last_good)
                elapsed = time.perf_counter() - started
                rate = images_seen / max(elapsed, 1e-9)
                progress(Progress(step, int(total_steps), epoch, result.last_losses, scheduler.get_last_lr()[0],
                                  rate, (total_steps - step) * config.batch_size * accelerator.num_processes / max(rate, 1e-9)))
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                checkpoint(epoch)
            if epoch_end is not None and step % steps_per_epoch == 0:
                model.eval()
                stop = epoch_end(epoch)
                model.train()
                if stop and step < total_steps:
                    result.status = "stopped_early"
                    checkpoint(epoch)
                    return result
            if deadline is not None and step < total_steps:
                now = clock()
                longest_step_s, step_started = max(longest_step_s, now - step_started), now
                if now + longest_step_s + reserve_s >= deadline:
                    result.status = "paused"
                    checkpoint(epoch)
                    return result
    checkpoint(result.epoch)
    return result
