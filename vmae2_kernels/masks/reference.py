"""Plain-PyTorch references of the mask-id ops (the specification): ``grid = (T', H', W')`` tokens in ``(t, h, w)``
order; the ids returned are the kept tokens, ``[B, K]`` int64, ascending."""
from __future__ import annotations

import torch


def running_cell_ids(phase: torch.Tensor, grid: tuple[int, int, int], masked_per_cell: int) -> torch.Tensor:
    """Decoder-visible ids ``[B, T'H'W'(4-m)/4]`` of running-cell masks, ascending.

    ``phase [B]`` int in 0..3 is the official generator row; token ``(t, h, w)`` is masked iff
    ``(2*(h%2) + w%2 + phase + t + 1) % 4 < masked_per_cell``.
    """
    t, h, w = grid
    dev = phase.device
    slot = (2 * (torch.arange(h, device=dev)[:, None] % 2) + torch.arange(w, device=dev)[None, :] % 2).flatten()
    code = slot[None, :] + torch.arange(t, device=dev)[:, None] + 1
    mask = ((code[None] + phase.long()[:, None, None]) % 4 < masked_per_cell).reshape(phase.shape[0], -1)
    kept = t * h * w * (4 - masked_per_cell) // 4
    return torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :kept].contiguous()


def tube_ids(keys: torch.Tensor, num_frames: int, num_masked: int) -> torch.Tensor:
    """Encoder-visible ids ``[B, T' * (HW - m)]`` of tube masks from random ``keys [B, HW]``.

    Per sample the ``m`` spatial positions with the smallest keys (ties: lower index first) are masked in
    every temporal slice; the ids are ascending.
    """
    B, hw = keys.shape
    spatial = torch.argsort(keys, dim=1, stable=True)[:, num_masked:].sort(dim=1).values
    offsets = torch.arange(num_frames, device=keys.device)[:, None] * hw
    return (offsets[None] + spatial[:, None, :]).reshape(B, -1)
