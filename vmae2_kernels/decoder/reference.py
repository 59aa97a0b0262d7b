"""Plain-PyTorch references of the decoder input and its mask-token gradient (the specification).

Sums (the mask-token gradient) accumulate in :func:`vmae2_kernels.checks.accumulator` of the input's dtype.
"""
from __future__ import annotations

import torch

from vmae2_kernels.checks import accumulator


def decoder_input(x_vis: torch.Tensor, vis_ids: torch.Tensor, dec_ids: torch.Tensor, mask_token: torch.Tensor,
                  pos: torch.Tensor) -> torch.Tensor:
    """The decoder sequence ``[x_vis + pos[vis_ids] | mask_token + pos[dec_ids]]``: ``[B, Nv + Nd, D]``.

    ``x_vis [B, Nv, D]``, ``vis_ids [B, Nv]``, ``dec_ids [B, Nd]``, ``mask_token`` with ``D`` elements,
    ``pos [N, D]``. Mask tokens go to *every* decoder-visible position, including ones the encoder also saw
    (the official behaviour). The result has the promoted dtype of the three inputs: the official decoder takes
    its position table in the input video's dtype (fp32), so under autocast bf16 ``x_vis`` + fp32 table gives
    an fp32 decoder input and an fp32 residual stream.
    """
    d = x_vis.shape[-1]
    visible = x_vis + pos[vis_ids]
    masked = mask_token.reshape(1, 1, d) + pos[dec_ids]
    return torch.cat([visible, masked], dim=1)  # cat promotes dtypes


def mask_token_grad(grad: torch.Tensor, num_visible: int) -> torch.Tensor:
    """Gradient of :func:`decoder_input` w.r.t. ``mask_token``: ``grad[:, Nv:].sum((0, 1))`` ``[D]`` in
    ``accumulator(grad)`` (fp32; fp64 for an fp64 ``grad``)."""
    return grad[:, num_visible:].to(accumulator(grad.dtype)).sum(dim=(0, 1))
