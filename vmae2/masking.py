"""Encoder and decoder masks for VideoMAE V2 dual masking.

Conventions: ``grid = (T', H', W')`` tokens, flattened in ``(t, h, w)`` order (``n = t*H'*W' + h*W' + w``).
A *mask* is ``[B, N]`` bool with **True = masked** (dropped). An *ids* tensor is ``[B, K]`` int64 holding
the kept (visible) token indices of each sample, **sorted ascending** (the ops take any order), same ``K`` for every
sample. ``random_ids``, ``complement_ids``, ``ids_to_mask`` and ``mask_to_ids`` are :mod:`vmae2_kernels`' (one
implementation; VideoMAE's keep count ``N - int(ratio * N)`` here).

Masks are drawn for the whole batch at once on the target device, reproducibly from a
``torch.Generator`` (drawn on the generator's device when one is given). No host sync.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from vmae2_kernels.masks import api as _kernel_masks
from vmae2_kernels.masks.api import (
    RUNNING_CELL_RATIOS,
    complement_ids,
    ids_to_mask,
    mask_to_ids,
    running_cell_ids,
    running_cell_masked_per_cell,
    target_device,
    tube_ids,
)
from vmae2_kernels.masks.checks import check_even, check_grid, check_ratio

Grid = Sequence[int]

DECODER_MASK_TYPES = ("run_cell", "frame", "random")
__all__ = ["tube_mask", "tube_ids", "random_mask", "random_ids", "running_cell_mask", "running_cell_ids",
           "running_cell_num_kept", "frame_mask", "frame_ids", "decoder_ids", "mask_to_ids", "ids_to_mask",
           "complement_ids", "as_ids", "dual_ids", "RUNNING_CELL_RATIOS", "DECODER_MASK_TYPES"]


def _rand(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=target_device(device, generator))


# -- conversions --------------------------------------------------------------------------------------

def as_ids(mask_or_ids: torch.Tensor, num_tokens: int, name: str = "mask") -> torch.Tensor:
    """Kept ids ``[B, K]`` int64 from a ``[B, N]`` mask, bool or float 0/1 (nonzero = masked; one host sync), or from
    ids (passed through)."""
    if mask_or_ids.ndim != 2:
        raise ValueError(f"{name} must be 2-D ([B, N] bool mask or [B, K] ids), got shape {tuple(mask_or_ids.shape)}")
    if mask_or_ids.dtype == torch.bool or mask_or_ids.is_floating_point():
        if mask_or_ids.shape[1] != num_tokens:
            raise ValueError(f"{name} has {mask_or_ids.shape[1]} tokens per sample; the model has {num_tokens}")
        return mask_to_ids(mask_or_ids)
    if mask_or_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} must be a bool or float 0/1 mask, or int64 ids, got dtype {mask_or_ids.dtype}")
    if mask_or_ids.shape[1] > num_tokens:
        raise ValueError(f"{name} holds {mask_or_ids.shape[1]} ids per sample but there are only {num_tokens} tokens")
    return mask_or_ids.long()


def dual_ids(encoder_mask: torch.Tensor, decoder_mask: torch.Tensor | None,
             num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(encoder-visible ids, decoder-visible ids)`` from masks or ids.

    ``decoder_mask=None`` is VideoMAE v1: the decoder reconstructs every encoder-masked token.
    """
    vis = as_ids(encoder_mask, num_tokens, "encoder_mask")
    if decoder_mask is None:
        return vis, complement_ids(vis, num_tokens)
    dec = as_ids(decoder_mask, num_tokens, "decoder_mask")
    if dec.shape[0] != vis.shape[0]:
        raise ValueError(f"encoder_mask has batch {vis.shape[0]} but decoder_mask has batch {dec.shape[0]}")
    return vis, dec


# -- encoder masks ------------------------------------------------------------------------------------

def tube_mask(batch_size: int, grid: Grid, ratio: float, *, generator=None, device=None) -> torch.Tensor:
    """Tube mask ``[B, N]`` bool (True = masked); see :func:`tube_ids`."""
    ids = tube_ids(batch_size, grid, ratio, generator=generator, device=device)
    return ids_to_mask(ids, math.prod(check_grid(grid)))


def random_ids(batch_size: int, grid: Grid, ratio: float, *, generator=None, device=None) -> torch.Tensor:
    """Kept ids ``[B, N - int(ratio * N)]`` of uniformly random masks over all ``N`` tokens (VideoMAE's count):
    :func:`vmae2_kernels.random_ids` with ``keep="floor_masked"`` (VideoMAE's count)."""
    return _kernel_masks.random_ids(batch_size, math.prod(check_grid(grid)), ratio, keep="floor_masked",
                                    generator=generator, device=device)


def random_mask(batch_size: int, grid: Grid, ratio: float, *, generator=None, device=None) -> torch.Tensor:
    """Uniformly random mask ``[B, N]`` bool masking ``int(ratio * N)`` tokens per sample."""
    ids = random_ids(batch_size, grid, ratio, generator=generator, device=device)
    return ids_to_mask(ids, math.prod(check_grid(grid)))


# -- decoder masks ------------------------------------------------------------------------------------

def running_cell_mask(batch_size: int, grid: Grid, ratio: float = 0.5, *, phase=None,
                      generator=None, device=None) -> torch.Tensor:
    """Running-cell decoder mask ``[B, N]`` bool (True = not reconstructed by the decoder).

    Closed form of the official ``RunningCellMaskingGenerator``: with cell slot
    ``j = 2*(h%2) + (w%2)`` and ``m = int(4*ratio)`` masked slots per 2x2 cell,
    ``mask[t, h, w] = (j + phase + t + 1) % 4 < m``. ``phase`` (int or ``[B]`` tensor in 0..3) equals the
    official row ``all_mask_maps[phase]``; ``None`` draws it uniformly per sample.
    """
    ids = running_cell_ids(batch_size, grid, ratio, phase, generator=generator, device=device)
    return ids_to_mask(ids, math.prod(check_grid(grid)))


def running_cell_num_kept(grid: Grid, ratio: float = 0.5) -> int:
    """Decoder-visible tokens per sample: ``N * (4 - m) / 4``."""
    t, h, w = check_even(grid)
    return t * h * w * (4 - running_cell_masked_per_cell(ratio)) // 4


def frame_ids(batch_size: int, grid: Grid, ratio: float = 0.5, *, generator=None, device=None) -> torch.Tensor:
    """Decoder-visible ids of *frame* masking (paper ablation): ``int(ratio*T')`` random whole temporal
    slices are masked per sample, the other slices are reconstructed in full."""
    t, h, w = check_grid(grid)
    check_ratio(ratio)
    m = int(ratio * t)
    frames = _rand((batch_size, t), generator, device).argsort(dim=1)[:, m:].sort(dim=1).values
    within = torch.arange(h * w, device=frames.device)
    return (frames[:, :, None] * (h * w) + within).reshape(batch_size, -1)


def frame_mask(batch_size: int, grid: Grid, ratio: float = 0.5, *, generator=None, device=None) -> torch.Tensor:
    """Frame decoder mask ``[B, N]`` bool; see :func:`frame_ids`."""
    ids = frame_ids(batch_size, grid, ratio, generator=generator, device=device)
    return ids_to_mask(ids, math.prod(check_grid(grid)))


def decoder_ids(kind: str, batch_size: int, grid: Grid, ratio: float, *, generator=None,
                device=None) -> torch.Tensor:
    """Decoder-visible ids for ``kind`` in :data:`DECODER_MASK_TYPES` (``run_cell`` is the official one)."""
    if kind == "run_cell":
        return running_cell_ids(batch_size, grid, ratio, generator=generator, device=device)
    if kind == "frame":
        return frame_ids(batch_size, grid, ratio, generator=generator, device=device)
    if kind == "random":
        return random_ids(batch_size, grid, ratio, generator=generator, device=device)
    raise ValueError(f"decoder mask type {kind!r} is unknown; choose one of {DECODER_MASK_TYPES}")
