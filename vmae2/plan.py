"""``python -m vmae2.plan``: the PREDICTED memory of a pretraining step on one GPU for every activation-checkpointing
mode, and the plan: the mode with the least recomputation that fits.

It takes the options of ``python -m vmae2.train`` (the same presets and ``--config`` files; by default the official
scripts' settings, ``--preset vit_g_hybrid_pt``: ViT-g, 32 videos x 4 views = 128 clips per GPU, 16x224) and the
GPU, and prints the peak per mode split into weights, optimizer state, gradients, saved activations per block
part (LayerNorms / attention / MLP), the loss and the working memory, against the GPU's capacity, with the step's
FLOPs and the recomputation each mode costs. ``--with_checkpoint auto`` (the ViT-H/g presets) makes the same choice
when training starts, for the GPU it runs on. The plan itself is :mod:`vmae2.runs.plan`.
"""
from __future__ import annotations

from dataclasses import dataclass

from vmae2.cli import Command, count, entry, opt
from vmae2.train import PRESETS, TrainConfig
from vmae2.training.gpu_memory import GPUS, MARGIN, RESERVE_GIB


@dataclass
class PlanConfig(TrainConfig):
    """The training options plus the GPU and the headroom the plan keeps."""

    gpu: str = opt("h100-80gb", "GPU: a100-80gb (79.35 GiB), h100-80gb (79.21 GiB) or h200 (139.80 GiB), the "
                                "capacity torch reports", choices=tuple(GPUS))
    world_size: int = count(8, "GPUs of the run; above 1, DDP keeps a bucket copy of the gradients (4 B/parameter)")
    reserve_gib: float = opt(RESERVE_GIB, "GiB outside PyTorch's caching allocator (CUDA context and kernels, NCCL)",
                             ">= 0")
    margin: float = opt(MARGIN, "fraction of the rest kept free for the allocator's rounding and fragmentation",
                        "[0, 1)")


PLAN = Command(
    "python -m vmae2.plan",
    "PREDICTED peak memory of one pretraining step per activation-checkpointing mode, and the mode with the least "
    "recomputation that fits the GPU. Takes the options of python -m vmae2.train (only those that change memory "
    "matter: model, batch_size, num_sample, geometry, masks, decoder_depth, precision, attn_backend, accum_steps).",
    PlanConfig, PRESETS, "vit_g_hybrid_pt", "official script settings (vit_*_hybrid_pt) or demo")


main = entry(PLAN, "vmae2.runs.plan:run")


if __name__ == "__main__":
    raise SystemExit(main())
