"""Plain-PyTorch references of the token ops (the specification for every faster backend).

Conventions: tokens ``[B, N, C]`` in ``(t, h, w)`` order; ids ``[B, K]`` int64, sorted ascending, same ``K``
for every sample; a position table ``pos [N, C]`` is shared by the batch.
"""
from __future__ import annotations

import torch


def token_gather(x: torch.Tensor, ids: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    """``out[b, k] = x[b, ids[b, k]] (+ pos[ids[b, k]])``: ``[B, N, C], [B, K] -> [B, K, C]``.

    Equivalent pytorch code of the official boolean gather ``x[~mask].reshape(B, -1, C)`` when ``ids``
    are the ascending kept positions. Differentiable w.r.t. ``x`` (the adjoint is a scatter-add).
    """
    out = torch.gather(x, 1, ids[:, :, None].expand(-1, -1, x.shape[-1]))
    if pos is not None:
        out = out + pos[ids].to(out.dtype)
    return out


def decoder_input(x_vis: torch.Tensor, vis_ids: torch.Tensor, dec_ids: torch.Tensor, mask_token: torch.Tensor,
                  pos: torch.Tensor) -> torch.Tensor:
    """The decoder sequence ``[x_vis + pos[vis_ids] | mask_token + pos[dec_ids]]``: ``[B, Nv + Nd, D]``.

    ``x_vis [B, Nv, D]``, ``vis_ids [B, Nv]``, ``dec_ids [B, Nd]``, ``mask_token [D]`` (any shape with
    ``D`` elements), ``pos [N, D]``. Mask tokens go to *every* decoder-visible position, including ones the
    encoder also saw (the official behaviour). ``pos`` is cast to ``x_vis.dtype``; the result has the
    promoted dtype of ``x_vis`` and ``mask_token`` (under autocast: bf16 ``x_vis`` + fp32 ``mask_token`` ->
    fp32, exactly as the official decoder, whose residual stream therefore stays fp32).
    """
    d = x_vis.shape[-1]
    pos = pos.to(x_vis.dtype)
    visible = x_vis + pos[vis_ids]
    masked = mask_token.reshape(1, 1, d) + pos[dec_ids]
    return torch.cat([visible, masked], dim=1)  # cat promotes dtypes
