"""Checks of the mask builders' arguments and of the mask-id ops' inputs (host-side: no sync)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from vmae2_kernels.checks import shape_of


def check_grid(grid: Sequence[int]) -> tuple[int, int, int]:
    if len(grid) != 3 or any(int(g) != g or g < 1 for g in grid):
        raise ValueError(f"grid {tuple(grid)} must be three positive integers (T', H', W')")
    return tuple(int(g) for g in grid)


def check_ratio(ratio: float, name: str = "ratio") -> None:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"{name} {ratio} is out of range; use a value in [0, 1) (e.g. 0.9 for the encoder)")


def check_even_grid(H: int, W: int) -> None:
    if H % 2 or W % 2:
        raise ValueError(f"running-cell masking needs an even spatial grid, got H'={H}, W'={W} "
                         f"(the 2x2 cell must tile the frame; use an image size giving even H'/W')")


def check_running_cell(phase: Tensor, T: int, H: int, W: int, masked_per_cell: int) -> Tensor:
    """Validated ``phase`` as int64 in 0..3 (any integer phase taken modulo 4 on its device: no sync)."""
    check_even_grid(H, W)
    if T < 1 or not 0 <= masked_per_cell <= 4:
        raise ValueError(f"T'={T} must be >= 1 and masked_per_cell={masked_per_cell} in 0..4")
    if phase.ndim != 1 or phase.dtype.is_floating_point or phase.dtype == torch.bool:
        raise ValueError(f"phase must be a [B] integer tensor, got {shape_of(phase)} {phase.dtype}")
    return phase.long().remainder(4)


def check_tube(keys: Tensor, num_frames: int, num_masked: int) -> None:
    if keys.ndim != 2 or not keys.dtype.is_floating_point:
        raise ValueError(f"keys must be a [B, H'W'] float tensor, got {shape_of(keys)} {keys.dtype}")
    if num_frames < 1 or not 0 <= num_masked <= keys.shape[1]:
        raise ValueError(f"num_frames={num_frames} must be >= 1 and num_masked={num_masked} in "
                         f"[0, {keys.shape[1]}]")


def check_even(grid: Sequence[int]) -> tuple[int, int, int]:
    t, h, w = check_grid(grid)
    check_even_grid(h, w)
    return t, h, w
