"""Triton kernels of the mask-id ops and their launchers (imported only when Triton is importable). Each launcher has
the signature of its reference in :mod:`vmae2_kernels.masks.reference`."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from vmae2_kernels.masks.tiles import tube_tile
from vmae2_kernels.triton_common import launcher


@triton.jit
def _running_cell_kernel(phase_ptr,  # [B] int64 official generator row (0..3)
                         out_ptr,  # [B, T * KEPT] int64 decoder-visible ids
                         T, H, W, KEPT,  # KEPT = visible tokens per temporal slice
                         M: tl.constexpr, BLOCK: tl.constexpr):
    """One program per (sample, temporal slice): mask in closed form, compact the kept ids by a prefix sum."""
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1)
    s = tl.load(phase_ptr + b).to(tl.int32)
    n = tl.arange(0, BLOCK)
    h = n // W
    w = n % W
    masked = (2 * (h % 2) + (w % 2) + s + t + 1) % 4 < M
    keep = (n < H * W) & (masked == 0)
    slot = tl.cumsum(keep.to(tl.int32), axis=0) - 1
    token = (t * H * W + n).to(tl.int64)
    tl.store(out_ptr + (b * T + t) * KEPT + slot, token, mask=keep)


@launcher
def running_cell_ids(phase: torch.Tensor, grid, masked_per_cell: int) -> torch.Tensor:
    t, h, w = grid
    kept = h * w * (4 - masked_per_cell) // 4
    out = torch.empty(phase.shape[0], t * kept, dtype=torch.int64, device=phase.device)
    _running_cell_kernel[(phase.shape[0], t)](phase.contiguous(), out, t, h, w, kept, M=masked_per_cell,
                                               BLOCK=triton.next_power_of_2(h * w))
    return out


@triton.jit
def _tube_kernel(keys_ptr,  # [B, HW] float random keys
                 out_ptr,  # [B, T * (HW - M)] int64 encoder-visible ids
                 T, HW, M,
                 BLOCK: tl.constexpr, BLOCK_J: tl.constexpr):
    """One program per sample: rank every key (ties by index), keep ranks >= M, compact, repeat over T."""
    b = tl.program_id(0).to(tl.int64)
    n = tl.arange(0, BLOCK)
    ok = n < HW
    key = tl.load(keys_ptr + b * HW + n, mask=ok, other=float("inf"))
    rank = tl.zeros((BLOCK,), dtype=tl.int32)
    for j0 in range(0, HW, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        kj = tl.load(keys_ptr + b * HW + j, mask=j < HW, other=float("inf"))
        before = (kj[None, :] < key[:, None]) | ((kj[None, :] == key[:, None]) & (j[None, :] < n[:, None]))
        rank += tl.sum((before & (j[None, :] < HW)).to(tl.int32), axis=1)
    keep = ok & (rank >= M)
    slot = tl.cumsum(keep.to(tl.int32), axis=0) - 1
    kept = HW - M
    for t in range(0, T):
        tl.store(out_ptr + (b * T + t) * kept + slot, (t * HW + n).to(tl.int64), mask=keep)


@launcher
def tube_ids(keys: torch.Tensor, num_frames: int, num_masked: int) -> torch.Tensor:
    keys = keys.contiguous()
    B, hw = keys.shape
    out = torch.empty(B, num_frames * (hw - num_masked), dtype=torch.int64, device=keys.device)
    _tube_kernel[(B,)](keys, out, num_frames, hw, num_masked, **tube_tile(hw))
    return out
