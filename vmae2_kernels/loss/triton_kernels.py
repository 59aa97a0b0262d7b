"""Triton kernels of the fused loss and its gradient, and their launchers (imported only when Triton is importable).
Each launcher has the signature of its reference in :mod:`vmae2_kernels.loss.reference`."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from vmae2_kernels.loss.tiles import LOSS_TILES
from vmae2_kernels.tiles import check_grid
from vmae2_kernels.triton_common import launcher, token_cell


@triton.jit
def _recon_token(pred_ptr, video_ptr, ids_ptr, ND, HP, WP,
                 s_vb, s_vc, s_vt, s_vh, mean0, mean1, mean2, std0, std1, std2,
                 PATCH: tl.constexpr, TUB: tl.constexpr, TARGET: tl.constexpr, BLOCK_P: tl.constexpr):
    """Load this program's token (axis 0 is ``b * ND + k``: batch ``b``, decoder slot ``k``): its prediction
    ``[BLOCK_P, 4]`` and its target, built from the video (never stored).

    Returns ``(token, pred, target, ok)``: ``token = b * ND + k``, the row in ``ids``, ``weights`` and ``pred``,
    and fp32 tiles over (pixel (p0 p1 p2), channel padded 3 -> 4). The video is read along the tile's pixel axis
    (``p2`` runs are contiguous: 128-bit loads for patch 16); the prediction row is read flat (contiguous,
    128-bit) and moved to the tile by :func:`_flat_to_tile`.
    """
    P: tl.constexpr = TUB * PATCH * PATCH
    token = tl.program_id(0).to(tl.int64)
    b, t, hh, ww = token_cell(ids_ptr, token, ND, HP, WP)
    i = tl.arange(0, BLOCK_P)
    c = tl.arange(0, 4)
    ok = (i < P)[:, None] & (c < 3)[None, :]
    p0 = i // (PATCH * PATCH)
    p1 = (i // PATCH) % PATCH
    p2 = i % PATCH
    offs = (b * s_vb + c[None, :] * s_vc + (t * TUB + p0)[:, None] * s_vt + (hh * PATCH + p1)[:, None] * s_vh
            + (ww * PATCH + p2)[:, None])
    x = tl.load(video_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    mean = tl.where(c == 0, mean0, tl.where(c == 1, mean1, mean2))
    std = tl.where(c == 0, std0, tl.where(c == 1, std1, std2))
    x = x * std[None, :] + mean[None, :]
    if TARGET == 1:  # VideoMAE: per channel, eps added to the std
        mu = tl.sum(tl.where(ok, x, 0.0), axis=0) / P
        xc = tl.where(ok, x - mu[None, :], 0.0)
        sigma = tl.sqrt(tl.sum(xc * xc, axis=0) / (P - 1))
        x = xc / (sigma + 1e-6)[None, :]
    elif TARGET == 2:  # MAE: over pixels and channels together, eps added to the variance
        mu = tl.sum(tl.sum(tl.where(ok, x, 0.0), axis=1), axis=0) / (P * 3)
        xc = tl.where(ok, x - mu, 0.0)
        var = tl.sum(tl.sum(xc * xc, axis=1), axis=0) / (P * 3 - 1)
        x = xc / tl.sqrt(var + 1e-6)
    f = tl.arange(0, 4 * BLOCK_P)
    flat = tl.load(pred_ptr + token * (P * 3) + f, mask=f < P * 3, other=0.0).to(tl.float32)
    return token, _flat_to_tile(flat, BLOCK_P), x, ok


@triton.jit
def _flat_to_tile(flat, BLOCK_P: tl.constexpr):
    """``[4 * BLOCK_P]`` values in ``(pixel, channel)`` order, 3 channels -> the ``[BLOCK_P, 4]`` tile.

    Element ``(i, c)`` of the tile is ``flat[3 * i + c]`` (``c = 3`` picks a neighbour; callers mask it). A
    register/shared-memory gather: a stride-3 global access cannot be 128-bit, this one stays contiguous.
    """
    j = tl.arange(0, 4 * BLOCK_P)
    return tl.reshape(tl.gather(flat, (j // 4) * 3 + j % 4, 0), (BLOCK_P, 4))


@triton.jit
def _tile_to_flat(tile, BLOCK_P: tl.constexpr):
    """Inverse of :func:`_flat_to_tile`: flat index ``f < 3 * BLOCK_P`` takes ``tile[f // 3, f % 3]``."""
    f = tl.arange(0, 4 * BLOCK_P)
    src = tl.minimum((f // 3) * 4 + f % 3, 4 * BLOCK_P - 1)  # f >= 3 * BLOCK_P: padding, masked by the caller
    return tl.gather(tl.reshape(tile, (4 * BLOCK_P,)), src, 0)


# One program per token: [BLOCK_P, 4] fp32 tiles (BLOCK_P = 512 for p16 and p14). One fixed launch configuration,
# not autotuned, so the loss and its gradient are the same bits on every rank and every run (loss.tiles.LOSS_TILES
# says why this one).
[(_, LOSS_WARPS, LOSS_STAGES, _)] = LOSS_TILES  # exactly one


@triton.jit
def _recon_loss_fwd_kernel(pred_ptr, video_ptr, ids_ptr, weight_ptr,
                           out_ptr,  # [B * ND] fp32 weighted per-token MSE
                           ND, HP, WP, s_vb, s_vc, s_vt, s_vh, mean0, mean1, mean2, std0, std1, std2,
                           PATCH: tl.constexpr, TUB: tl.constexpr, TARGET: tl.constexpr, BLOCK_P: tl.constexpr):
    token, pred, target, ok = _recon_token(pred_ptr, video_ptr, ids_ptr, ND, HP, WP, s_vb, s_vc, s_vt, s_vh,
                                           mean0, mean1, mean2, std0, std1, std2, PATCH, TUB, TARGET, BLOCK_P)
    diff = tl.where(ok, pred - target, 0.0)
    mse = tl.sum(tl.sum(diff * diff, axis=1), axis=0) / (TUB * PATCH * PATCH * 3)
    w = tl.load(weight_ptr + token).to(tl.float32)
    tl.store(out_ptr + token, mse * w)


@triton.jit
def _recon_loss_bwd_kernel(pred_ptr, video_ptr, ids_ptr, weight_ptr,
                           scale_ptr,  # [] fp32: grad_out * 2 / (P * 3 * sum(weights)), read on the device
                           grad_ptr,  # [B, ND, P*3] gradient w.r.t. pred (pred's dtype)
                           ND, HP, WP, s_vb, s_vc, s_vt, s_vh, mean0, mean1, mean2, std0, std1, std2,
                           PATCH: tl.constexpr, TUB: tl.constexpr, TARGET: tl.constexpr, BLOCK_P: tl.constexpr):
    token, pred, target, ok = _recon_token(pred_ptr, video_ptr, ids_ptr, ND, HP, WP, s_vb, s_vc, s_vt, s_vh,
                                           mean0, mean1, mean2, std0, std1, std2, PATCH, TUB, TARGET, BLOCK_P)
    scale = tl.load(scale_ptr) * tl.load(weight_ptr + token).to(tl.float32)
    F: tl.constexpr = TUB * PATCH * PATCH * 3
    f = tl.arange(0, 4 * BLOCK_P)
    grad = _tile_to_flat((pred - target) * scale, BLOCK_P)  # contiguous row: 128-bit stores
    tl.store(grad_ptr + token * F + f, grad.to(grad_ptr.dtype.element_ty), mask=f < F)


def _loss_args(pred, video, dec_ids, weights, patch_size, tubelet_size, mean, std):
    video = video if video.stride(-1) == 1 else video.contiguous()
    B, _, T, H, W = video.shape
    return ((pred.contiguous(), video, dec_ids.contiguous(), weights.contiguous()),
            (dec_ids.shape[1], H // patch_size, W // patch_size, *video.stride()[:4], *mean, *std),
            dict(PATCH=patch_size, TUB=tubelet_size, BLOCK_P=triton.next_power_of_2(tubelet_size * patch_size ** 2),
                 num_warps=LOSS_WARPS, num_stages=LOSS_STAGES),
            check_grid((B * dec_ids.shape[1],), "recon_loss"))


@launcher
def recon_loss(pred, video, dec_ids, weights, patch_size, tubelet_size, target, mean, std):
    tensors, scalars, meta, grid = _loss_args(pred, video, dec_ids, weights, patch_size, tubelet_size, mean, std)
    per_token = torch.empty(grid, dtype=torch.float32, device=pred.device)
    _recon_loss_fwd_kernel[grid](*tensors, per_token, *scalars, TARGET=target, **meta)
    return per_token.sum() / weights.float().sum()


@launcher
def recon_loss_backward(grad_out, pred, video, dec_ids, weights, patch_size, tubelet_size, target, mean, std):
    tensors, scalars, meta, grid = _loss_args(pred, video, dec_ids, weights, patch_size, tubelet_size, mean, std)
    scale = (grad_out.float() * 2.0 / (pred.shape[-1] * weights.float().sum())).reshape(())
    grad = torch.empty_like(tensors[0])
    _recon_loss_bwd_kernel[grid](*tensors, scale, grad, *scalars, TARGET=target, **meta)
    return grad
