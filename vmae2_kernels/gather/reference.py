"""Plain-PyTorch references of the gathers: the specification the Triton, C++ and CUDA kernels are tested against.

Tokens ``[B, N, C]`` in ``(t, h, w)`` order; ids ``[B, K]`` int64, unique within a row and in ``[0, N)``, in any order
(row ``k`` of a result follows ``ids[:, k]``); a position table ``pos [N, C]`` is shared by the batch (the ops layer
turns ``[1, N, C]`` into it). Data movement keeps its input's dtype.
"""
from __future__ import annotations

from typing import Sequence

import torch


def token_gather(x: torch.Tensor, ids: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    """``out[b, k] = x[b, ids[b, k]] (+ pos[ids[b, k]])``: ``[B, N, C], [B, K] -> [B, K, C]``.

    Equals the official boolean-mask gather (``x`` indexed by the inverted mask, reshaped to ``[B, K, C]``) when
    ``ids`` are the ascending kept positions.
    """
    out = torch.gather(x, 1, ids[:, :, None].expand(-1, -1, x.shape[-1]))
    if pos is not None:
        out = out + pos[ids].to(out.dtype)
    return out


def token_scatter(src: torch.Tensor, ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Adjoint of :func:`token_gather`: ``out [B, N, C]`` zeros with ``out[b, ids[b, k]] += src[b, k]``."""
    B, _, C = src.shape
    out = src.new_zeros(B, num_tokens, C)
    return out.scatter_add_(1, ids[:, :, None].expand(-1, -1, C), src)


def tubelet_gather(video: torch.Tensor, ids: torch.Tensor, patch_size: int, tubelet_size: int) -> torch.Tensor:
    """The pixels of the tubelets ``ids``: ``[B, 3, T, H, W], [B, K] -> [B, K, 3*t*p*p]``.

    Tubelets of ``t`` frames and ``p x p`` pixels, numbered in ``(t, h, w)`` order over the grid ``(T/t, H/p, W/p)``;
    a row holds its pixels in ``(c, p0, p1, p2)`` order, the order of a Conv3d weight's ``weight.flatten(1)``, so
    ``rows @ weight.flatten(1).T + bias`` is that Conv3d (kernel = stride = ``(t, p, p)``) at the tokens ``ids``.
    """
    B, C, T, H, W = video.shape
    t, p = tubelet_size, patch_size
    x = video.reshape(B, C, T // t, t, H // p, p, W // p, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
    x = x.reshape(B, -1, C * t * p * p)  # [B, N, F]: every tubelet
    return torch.gather(x, 1, ids[:, :, None].expand(-1, -1, x.shape[-1]))


def tubelet_scatter(rows: torch.Tensor, ids: torch.Tensor, video_shape: Sequence[int], patch_size: int,
                    tubelet_size: int) -> torch.Tensor:
    """Adjoint of :func:`tubelet_gather`: ``[B, K, 3*t*p*p]`` -> a zero video of ``video_shape`` holding each row at
    its tubelet. Writes the rows through a strided view of the output (no copy of the whole video, no sync)."""
    B, C, T, H, W = video_shape
    t, p = tubelet_size, patch_size
    h, w = H // p, W // p
    out = rows.new_zeros(B, C, T, H, W)
    view = out.view(B, C, T // t, t, h, p, w, p).permute(0, 2, 4, 6, 1, 3, 5, 7)  # [B, T', H', W', C, t, p, p]
    batch = torch.arange(B, device=rows.device)[:, None]
    view[batch, ids // (h * w), (ids // w) % h, ids % w] = rows.reshape(B, ids.shape[1], C, t, p, p)
    return out
