"""Triton kernels of the token ops and their launchers (imported only when Triton is importable).

Each launcher has the signature of its reference in :mod:`vmae2_kernels.reference` and is tested against
it. Conventions: last dims contiguous (launchers make them so), ids int64 ``[B, K]`` unique per row,
program ids widened to int64 before address arithmetic, accumulation in fp32.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from vmae2_kernels.tiles import LOSS_TILES, ROW_TILES, TUBELET_TILE, check_grid, tube_tile

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _cpu_bench(kernel_call, quantiles=None, **_):
    """Autotune timer for the interpreter, which has no GPU benchmarker (speed is meaningless there)."""
    kernel_call()
    return [1.0, 1.0, 1.0] if quantiles else 1.0


def device_guard(device: torch.device):
    """Make ``device`` current for a launch: Triton launches on the current CUDA device, not the tensors'."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def launcher(fn):
    """Run the launcher ``fn`` under :func:`device_guard` of its first tensor argument's device."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        first = next(a for a in args if isinstance(a, torch.Tensor))
        with device_guard(first.device):
            return fn(*args, **kwargs)
    return run


def capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on ``device``'s current stream (never on a CPU tensor)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def tuned_launch(kernel, grid, device: torch.device, *args, **kwargs) -> None:
    """Launch the autotuned ``kernel`` (its positional ``args``, constexpr ``kwargs``) on ``grid``.

    Outside a CUDA graph capture: the autotuner (it times every candidate on the first call per key, a host sync).
    During a capture, where timing cannot run (nor sync): the autotuner's pick for this key when it has one, else
    the default (first) candidate of the tile list, launched directly; the pick is not cached, so a later call
    outside the capture still tunes. Call the op once outside the capture (the usual warm-up) to run the tuned tile:
    a capture cannot compile either, so a shape whose Triton specialisation (integers divisible by 16 or not) was
    never launched needs that warm-up in any case.
    """
    if not capturing(device):
        kernel[grid](*args, **kwargs)
        return
    named = dict(zip(kernel.arg_names, args))
    key = tuple([named[k] for k in kernel.keys if k in named] + [str(a.dtype) for a in args if hasattr(a, "dtype")])
    config = kernel.cache.get(key, kernel.configs[0])
    kernel.fn[grid](*args, **kwargs, **config.all_kwargs())


def _configs(tiles):
    """Autotune configs from :mod:`vmae2_kernels.tiles`' ``(block kwargs, num_warps, num_stages, reason)``
    candidates; a single config under the interpreter."""
    configs = [triton.Config(kw, num_warps=w, num_stages=s) for kw, w, s, _ in tiles]
    return configs[:1] if INTERPRET else configs


# -- token gather / scatter -----------------------------------------------------------------------------
# One program moves a BLOCK_K x BLOCK_C tile of rows. Rows are 2*C bytes (bf16) to 4*C bytes: the row copy
# is pure bandwidth; 128-bit accesses need C % 8 == 0 (bf16) or C % 4 == 0 (fp32), true for every ViT width.
# The candidates, and why each one, are in tiles.ROW_TILES (chosen with the roofline / occupancy model; the
# compile report `python -m benchmarks.gpu_report` shows their registers, 128-bit accesses and occupancy).
ROW_CONFIGS = _configs(ROW_TILES)


@triton.autotune(configs=ROW_CONFIGS, key=["K", "C"], do_bench=_cpu_bench if INTERPRET else None)
@triton.jit
def _row_copy_kernel(src_ptr,  # [B, N or K, C] source rows
                     ids_ptr,  # [B, K] int64 token ids
                     pos_ptr,  # [N, C] position table (read only when HAS_POS)
                     dst_ptr,  # [B, K or N, C] destination rows
                     K, C, src_batch_stride, dst_batch_stride,
                     SCATTER: tl.constexpr, HAS_POS: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr):
    k_blocks = tl.cdiv(K, BLOCK_K)
    b = (tl.program_id(0) // k_blocks).to(tl.int64)  # axis 0: b * k_blocks + block of rows
    k = (tl.program_id(0) % k_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
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


def _row_grid(B, K, C, op: str):
    """Axis 0: the ``B * cdiv(K, BLOCK_K)`` row blocks (up to 2^31 - 1 programs); axis 1: the column blocks."""
    return lambda meta: check_grid((B * triton.cdiv(K, meta["BLOCK_K"]), triton.cdiv(C, meta["BLOCK_C"])), op)


@launcher
def token_gather(x: torch.Tensor, ids: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    x, ids = x.contiguous(), ids.contiguous()
    B, N, C = x.shape
    K = ids.shape[1]
    out = x.new_empty(B, K, C)
    if out.numel() == 0:
        return out
    pos_arg = pos.contiguous() if pos is not None else x
    tuned_launch(_row_copy_kernel, _row_grid(B, K, C, "token_gather"), x.device, x, ids, pos_arg, out, K, C,
                 N * C, K * C, SCATTER=False, HAS_POS=pos is not None)
    return out


@launcher
def token_scatter(src: torch.Tensor, ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
    src, ids = src.contiguous(), ids.contiguous()
    B, K, C = src.shape
    out = src.new_zeros(B, num_tokens, C)
    if src.numel() == 0:
        return out
    tuned_launch(_row_copy_kernel, _row_grid(B, K, C, "token_scatter"), src.device, src, ids, src, out, K, C,
                 K * C, num_tokens * C, SCATTER=True, HAS_POS=False)
    return out


# -- tubelet gather -------------------------------------------------------------------------------------
# One program per (token, BLOCK_F pixels of its row), the one launch configuration of tiles.TUBELET_TILE: grid axis 0
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
    b = row // K
    n = tl.load(ids_ptr + row).to(tl.int64)
    t = n // (HP * WP)
    hh = (n // WP) % HP
    ww = n % WP
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


# -- decoder input --------------------------------------------------------------------------------------

@triton.autotune(configs=ROW_CONFIGS, key=["L", "D"], do_bench=_cpu_bench if INTERPRET else None)
@triton.jit
def _decoder_input_kernel(x_ptr,  # [B, NV, D] encoder output (decoder width)
                          vis_ids_ptr,  # [B, NV] int64
                          dec_ids_ptr,  # [B, ND] int64
                          token_ptr,  # [D] mask token
                          pos_ptr,  # [N, D] decoder position table
                          out_ptr,  # [B, NV + ND, D]
                          NV, ND, L, D,
                          BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr):
    r_blocks = tl.cdiv(L, BLOCK_K)
    b = (tl.program_id(0) // r_blocks).to(tl.int64)  # axis 0: b * r_blocks + block of rows
    r = (tl.program_id(0) % r_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)
    d = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    r_ok = r < L
    d_ok = d < D
    visible = r < NV
    ok = r_ok[:, None] & d_ok[None, :]
    vis_tok = tl.load(vis_ids_ptr + b * NV + r, mask=r_ok & visible, other=0)
    dec_tok = tl.load(dec_ids_ptr + b * ND + (r - NV), mask=r_ok & (r >= NV), other=0)
    token = tl.where(visible, vis_tok, dec_tok).to(tl.int64)
    pos = tl.load(pos_ptr + token[:, None] * D + d[None, :], mask=ok).to(tl.float32)
    x = tl.load(x_ptr + (b * NV + r[:, None]) * D + d[None, :], mask=ok & visible[:, None], other=0.0)
    mask_token = tl.load(token_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    # fp32 sums, one rounding to the output dtype (the promoted dtype of x, mask token and table).
    val = tl.where(visible[:, None], x.to(tl.float32), mask_token[None, :]) + pos
    tl.store(out_ptr + (b * L + r[:, None]) * D + d[None, :], val.to(out_ptr.dtype.element_ty), mask=ok)


@launcher
def decoder_input(x_vis, vis_ids, dec_ids, mask_token, pos):
    x_vis, vis_ids, dec_ids = x_vis.contiguous(), vis_ids.contiguous(), dec_ids.contiguous()
    B, NV, D = x_vis.shape
    ND = dec_ids.shape[1]
    dtype = torch.promote_types(torch.promote_types(x_vis.dtype, mask_token.dtype), pos.dtype)
    out = x_vis.new_empty(B, NV + ND, D, dtype=dtype)
    if out.numel() == 0:
        return out
    tuned_launch(_decoder_input_kernel, _row_grid(B, NV + ND, D, "decoder_input"), x_vis.device, x_vis, vis_ids,
                 dec_ids, mask_token.contiguous().reshape(-1), pos.contiguous(), out, NV, ND, NV + ND, D)
    return out


@triton.jit
def _masked_rows_sum_kernel(grad_ptr,  # [B, NV + ND, D] gradient of the decoder input
                            part_ptr,  # [num_programs, D] fp32 partial sums
                            NV, ND, L, D, total_rows, rows_per_program,
                            BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Column sums of the B*ND mask-token rows. Deterministic: one partial row per program, summed after."""
    p = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < D
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i0 in range(0, rows_per_program, BLOCK_R):
        local = i0 + tl.arange(0, BLOCK_R)
        i = (p * rows_per_program + local).to(tl.int64)  # flat index over the mask-token rows
        i_ok = (local < rows_per_program) & (i < total_rows)
        row = (i // ND) * L + NV + i % ND
        g = tl.load(grad_ptr + row[:, None] * D + d[None, :], mask=i_ok[:, None] & d_ok[None, :], other=0.0)
        acc += tl.sum(g.to(tl.float32), axis=0)
    tl.store(part_ptr + p * D + d, acc, mask=d_ok)


@launcher
def mask_token_grad(grad: torch.Tensor, num_visible: int) -> torch.Tensor:
    """``grad[:, num_visible:].sum((0, 1))`` in fp32: ``[B, NV + ND, D] -> [D]``."""
    grad = grad.contiguous()
    B, L, D = grad.shape
    if D == 0:
        return grad.new_zeros(0, dtype=torch.float32)
    ND = L - num_visible
    total = B * ND
    programs = max(1, min(256, triton.cdiv(total, 256)))
    rows = triton.cdiv(total, programs)
    BLOCK_D = min(256, triton.next_power_of_2(D))
    part = grad.new_empty(programs, D, dtype=torch.float32)
    _masked_rows_sum_kernel[(programs, triton.cdiv(D, BLOCK_D))](grad, part, num_visible, ND, L, D, total, rows,
                                                                 BLOCK_R=32, BLOCK_D=BLOCK_D)
    return part.sum(0)


# -- mask id construction -------------------------------------------------------------------------------

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


# -- fused reconstruction loss --------------------------------------------------------------------------

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
    b = token // ND
    n = tl.load(ids_ptr + token).to(tl.int64)
    t = n // (HP * WP)
    hh = (n // WP) % HP
    ww = n % WP
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
# not autotuned, so the loss and its gradient are the same bits on every rank and every run (tiles.LOSS_TILES
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
