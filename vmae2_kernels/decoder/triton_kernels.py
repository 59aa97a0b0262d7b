"""Triton kernels of the decoder input and its mask-token gradient, and their launchers (imported only when Triton is
importable). Each launcher has the signature of its reference in :mod:`vmae2_kernels.decoder.reference`."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from vmae2_kernels.triton_common import ROW_CONFIGS, autotune_bench, launcher, row_block, row_grid, tuned_launch


@triton.autotune(configs=ROW_CONFIGS, key=["L", "D"], do_bench=autotune_bench)
@triton.jit
def _decoder_input_kernel(x_ptr,  # [B, NV, D] encoder output (decoder width)
                          vis_ids_ptr,  # [B, NV] int64
                          dec_ids_ptr,  # [B, ND] int64
                          token_ptr,  # [D] mask token
                          pos_ptr,  # [N, D] decoder position table
                          out_ptr,  # [B, NV + ND, D]
                          NV, ND, L, D,
                          BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr):
    b, r, d = row_block(L, BLOCK_K, BLOCK_C)
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
    tuned_launch(_decoder_input_kernel, row_grid(B, NV + ND, D, "decoder_input"), x_vis.device, x_vis, vis_ids,
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
