"""Run by tests/test_train.py under `torchrun --nproc_per_node 2`: trains a tiny model with DDP (gloo,
CPU) and writes each rank's final weights, so the test can check that the ranks agree."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import tiny_model  # noqa: E402
from core.hybrid import HybridConfig, build_branch  # noqa: E402
from core.train import TrainConfig, train  # noqa: E402
from datasets.shapes import ShapesDataset  # noqa: E402


def main() -> None:
    out, hybrid = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "off"
    model = tiny_model("detr", seed=0)  # the same initial weights on both ranks, as from_pretrained would give
    config = TrainConfig(max_steps=4, batch_size=2, lr=1e-3, lr_backbone=1e-3, freeze_stem=False,
                         shortest_edge=96, longest_edge=128, hflip=0.5, seed=0)
    branch = build_branch(model, 3, HybridConfig(method=hybrid, co_detr_strides=(8, 16, 32), anchor_scale=4.0))
    result = train(model, ShapesDataset(16, first_seed=40), config, branch=branch)
    rank = torch.distributed.get_rank()
    world = torch.distributed.get_world_size()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / f"rank{rank}.safetensors")
    (out / f"rank{rank}.txt").write_text(f"{world} {result.step}")


if __name__ == "__main__":
    main()
