"""Triton kernels of the gathers and their launchers (imported only when Triton is importable).

Each launcher has the signature of its reference in :mod:`vmae2_kernels.gather.reference` and is tested against it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from vmae2_kernels.gather.tiles import TUBELET_TILE
from vmae2_kernels.tiles import check_grid
from vmae2_kernels.triton_common import (ROW_CONFIGS, autotune_bench, launcher, row_block, row_grid, token_cell,
                                          tuned_launch)


# One program moves a BLOCK_K x BLOCK_C tile of rows. Rows are 2*C bytes (bf16) to 4*C bytes: the row copy
# is pure bandwidth; 128-bit accesses need C % 8 == 0 (bf16) or C % 4 == 0 (fp32), true for every ViT width.
# The candidates, and why each one, are in vmae2_kernels.tiles.ROW_TILES (chosen with the roofline / occupancy
# model; the compile report `python -m benchmarks.gpu.report` shows their registers, 128-bit accesses and
# occupancy).
@triton.autotune(configs=ROW_CONFIGS, key=["K", "C"], do_bench=autotune_bench)
@triton.jit
def _row_copy_kernel(src_ptr,  # [B, N or K, C] source rows
                     ids_ptr,  # [B, K] int64 token ids
                     pos_ptr,  # [N, C] position table (read only when HAS_POS)
                     dst_ptr,  # [B, K or N, C] destination rows
                     K, C, src_batch_stride, dst_batch_stride,
                     SCATTER: tl.constexpr, HAS_POS: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr):
    b, k, c = row_block(K, BLOCK_K, BLOCK_C)
    k_ok = k < K
    ok = k_ok[:, None] & (c[None, :] < C)
    token = tl.load(ids_ptr + b * K + k, mask=k_ok, other=0).to(tl.int64)
    src_row = token if not SCATTER else k.to(tl.int64)
    dst_row = k.to(tl.int64) if not SCATTER else token
    vals = tl.load(src_ptr + b * src_batch_stride + src_row[:, None] * C + c[None, :], mask=ok)
    if HAS_POS:
        pos = tl.load(pos_ptr + token[:, None] * C + c[None, :], mask=ok).to(vals.dtype)
        vals = (vals.to(tl.float32) + pos.to(tl.float32)).to(vals.dtype)
    tl.store(dst_ptr + b * dst_batch_stride + dst_row[:, None] * C + c[None, :], vals, mask=ok)


@launcher
def token_gather(x: torch.Tensor, ids: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    x, ids = x.contiguous(), ids.contiguous()
    B, N, C = x.shape
    K = ids.shape[1]
    out = x.new_empty(B, K, C)
    if out.numel() == 0:
        return out
    pos_arg = pos.contiguous() if pos is not None else x
    tuned_launch(_row_copy_kernel, row_grid(B, K, C, "token_gather"), x.device, x, ids, pos_arg, out, K, C,
                 N * C, K * C, SCATTER=False, HAS_POS=pos is not None)
    return out


@launcher
def token_scatter(src: torch.Tensor, ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
    src, ids = src.contiguous(), ids.contiguous()
    B, K, C = src.shape
    out = src.new_zeros(B, num_tokens, C)
    if src.numel() == 0:
        return out
    tuned_launch(_row_copy_kernel, row_grid(B, K, C, "token_scatter"), src.device, src, ids, src, out, K, C,
                 K * C, num_tokens * C, SCATTER=True, HAS_POS=False)
    return out


# One program per (token, BLOCK_F pixels of its row), the one launch configuration of gather.tiles.TUBELET_TILE:
# grid axis 0
# the B * K tokens (it takes up to 2^31 - 1 programs, axes 1 and 2 only 65535), axis 1 the blocks of a row. Pixel f
# of the row is (c, p0, p1, p2) = f // (TUB P P), f // (P P) % TUB, f // P % P, f % P: runs of PATCH pixels are
# contiguous in the video (unit stride along W), so patch 16 reads them with 128-bit loads; the row is written
# contiguously (128-bit stores). Patch 14 rows (ViT-g) start at multiples of 14 pixels: narrower loads, wide stores.
TUBELET_META = {**TUBELET_TILE[0], "num_warps": TUBELET_TILE[1], "num_stages": TUBELET_TILE[2]}


@triton.jit
def _tubelet_gather_kernel(video_ptr,  # [B, 3, T, H, W] video, unit stride along W
                           ids_ptr,  # [B, K] int64 token ids
                           out_ptr,  # [B, K, 3 * TUB * PATCH * PATCH] tubelet rows
                           K, HP, WP, s_vb, s_vc, s_vt, s_vh,
                           PATCH: tl.constexpr, TUB: tl.constexpr, BLOCK_F: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # b * K + k
    b, t, hh, ww = token_cell(ids_ptr, row, K, HP, WP)
    F: tl.constexpr = 3 * TUB * PATCH * PATCH
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    c = f // (TUB * PATCH * PATCH)
    p0 = (f // (PATCH * PATCH)) % TUB
    p1 = (f // PATCH) % PATCH
    offs = (b * s_vb + c * s_vc + (t * TUB + p0) * s_vt + (hh * PATCH + p1) * s_vh + ww * PATCH + f % PATCH)
    ok = f < F
    pixels = tl.load(video_ptr + offs, mask=ok)
    tl.store(out_ptr + row * F + f, pixels, mask=ok)


@launcher
def tubelet_gather(video: torch.Tensor, ids: torch.Tensor, patch_size: int, tubelet_size: int) -> torch.Tensor:
    video = video if video.stride(-1) == 1 else video.contiguous()
    ids = ids.contiguous()
    B, C, T, H, W = video.shape
    K, F = ids.shape[1], C * tubelet_size * patch_size * patch_size
    out = video.new_empty(B, K, F)
    grid = check_grid((B * K, triton.cdiv(F, TUBELET_META["BLOCK_F"])), "tubelet_gather")
    _tubelet_gather_kernel[grid](video, ids, out, K, H // patch_size, W // patch_size, *video.stride()[:4],
                                 PATCH=patch_size, TUB=tubelet_size, **TUBELET_META)
    return out
