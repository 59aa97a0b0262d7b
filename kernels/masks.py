"""Device-side construction of sorted mask ids (no boolean mask materialised by the kernels, no host sync).

``grid = (T', H', W')`` tokens in ``(t, h, w)`` order. Returned ids are the *kept* tokens, ``[B, K]`` int64,
ascending. Randomness comes from a ``torch.Generator`` (drawn on its device when given).
"""
from __future__ import annotations

from typing import Sequence

import torch

from vmae2_kernels import checks, ops

RUNNING_CELL_RATIOS = (0.25, 0.5, 0.75)


def check_grid(grid: Sequence[int]) -> tuple[int, int, int]:
    if len(grid) != 3 or any(int(g) != g or g < 1 for g in grid):
        raise ValueError(f"grid {tuple(grid)} must be three positive integers (T', H', W')")
    return tuple(int(g) for g in grid)


def check_ratio(ratio: float, name: str = "ratio") -> None:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"{name} {ratio} is out of range; use a value in [0, 1) (e.g. 0.9 for the encoder)")


def target_device(device, generator: torch.Generator | None) -> torch.device:
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def running_cell_masked_per_cell(ratio: float) -> int:
    """``m = int(4 * ratio)`` masked slots per 2x2 cell; only 0.25, 0.5 and 0.75 are allowed."""
    if ratio not in RUNNING_CELL_RATIOS:
        raise ValueError(
            f"running-cell ratio {ratio} is not supported; the 2x2 cell allows {RUNNING_CELL_RATIOS} "
            f"(the official generator floors other values to these and asserts ratio >= 0.25)")
    return int(4 * ratio)


def check_even(grid: Sequence[int]) -> tuple[int, int, int]:
    t, h, w = check_grid(grid)
    checks.check_even_grid(h, w)
    return t, h, w


def running_cell_phase(batch_size: int, phase=None, *, generator=None, device=None) -> torch.Tensor:
    """``[B]`` int64 phases: drawn uniformly from 0..3 when ``phase`` is None, else an int or ``[B]`` tensor."""
    dev = target_device(device, generator)
    if phase is None:
        return torch.randint(0, 4, (batch_size,), generator=generator, device=dev)
    if isinstance(phase, int):
        if not 0 <= phase < 4:
            raise ValueError(f"phase {phase} is out of range; use 0, 1, 2 or 3")
        return torch.full((batch_size,), phase, dtype=torch.long, device=dev)
    phase = torch.as_tensor(phase, device=dev).long()
    if phase.shape != (batch_size,):
        raise ValueError(f"phase has shape {tuple(phase.shape)}; expected ({batch_size},)")
    return phase


def running_cell_ids(batch_size: int, grid: Sequence[int], ratio: float = 0.5, phase=None, *, generator=None,
                     device=None, backend: str = "auto") -> torch.Tensor:
    """Decoder-visible ids ``[B, T'H'W'(4-m)/4]`` of the official running-cell mask, ascending.

    ``phase`` (int or ``[B]``, 0..3) is the official generator row ``all_mask_maps[phase]``; None draws it.
    """
    t, h, w = check_even(grid)
    m = running_cell_masked_per_cell(ratio)
    phase = running_cell_phase(batch_size, phase, generator=generator, device=device)
    return ops.running_cell_ids(phase, t, h, w, m, backend)


def tube_ids(batch_size: int, grid: Sequence[int], ratio: float, generator=None, *, device=None,
             backend: str = "auto") -> torch.Tensor:
    """Encoder-visible ids ``[B, T' * (H'W' - m)]`` of tube masks, ``m = int(ratio * H'W')``, ascending.

    Each sample masks a uniformly random set of ``m`` spatial positions in every temporal slice.
    """
    t, h, w = check_grid(grid)
    check_ratio(ratio)
    keys = torch.rand((batch_size, h * w), generator=generator, device=target_device(device, generator))
    return ops.tube_ids(keys, t, int(ratio * h * w), backend)


def mask_to_ids(mask: torch.Tensor, num_kept: int | None = None) -> torch.Tensor:
    """Kept ids ``[B, K]`` (ascending) of a ``[B, N]`` bool mask (True = masked).

    With ``num_kept`` given this is sync-free; without it ``K`` is read from the mask (one host sync) and
    every sample must keep the same number of tokens.
    """
    if mask.dtype != torch.bool or mask.ndim != 2:
        raise ValueError(f"mask must be [B, N] bool (True = masked), got {tuple(mask.shape)} {mask.dtype}")
    if num_kept is None:
        kept = (~mask).sum(dim=1)
        lo, hi = int(kept.min()), int(kept.max())
        if lo != hi:
            raise ValueError(f"masks keep between {lo} and {hi} tokens per sample; every sample must keep "
                             f"the same number (the sequence length is fixed per batch)")
        num_kept = lo
    # Stable sort of False(0) before True(1): kept ids first, each group ascending.
    return torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :num_kept]
