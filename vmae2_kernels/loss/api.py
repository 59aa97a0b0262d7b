"""The fused loss as a codebase calls it: target names, ``mean``/``std`` of the video, an encoder mask or per-row
weights, ``dec_ids`` as ids, a decoder mask or None, images as one-frame videos."""
from __future__ import annotations

from typing import Sequence

import torch

from vmae2_kernels import checks, ops
from vmae2_kernels.loss.reference import TARGETS
from vmae2_kernels.masks.api import mask_to_ids


def recon_loss(pred: torch.Tensor, video: torch.Tensor, dec_ids: torch.Tensor | None, mask: torch.Tensor | None = None,
               *, patch_size: int, tubelet_size: int = 2, target: str | None = None,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               weights: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """Fused reconstruction loss (MSE against per-patch targets); the full target tensor is never materialised.
    Returns a scalar in fp32 (fp32, bf16 or fp16 ``pred``) or fp64 (fp64 ``pred``: the reference, targets and sums in
    fp64 for an fp64 video); backward gives the gradient w.r.t. ``pred`` in ``pred``'s dtype.

    - ``pred [B, Nd, 3*t*p*p]`` (any float dtype), one row per reconstructed token, pixels in ``(p0 p1 p2 c)`` order
      (channel fastest); ``t = tubelet_size``, ``p = patch_size``.
    - ``video [B, 3, T, H, W]``, or images ``[B, 3, H, W]`` with ``tubelet_size=1``; tokens in ``(t, h, w)`` order.
    - ``dec_ids``: which token each ``pred`` row is: ids ``[B, Nd]``; or a decoder mask ``[B, N]`` (bool or float 0/1,
      True/1 = not reconstructed), whose ``Nd`` kept tokens are taken in ascending order (``Nd`` from ``pred``: no
      host sync); or None: ``pred`` covers every token in order (MAE: ``Nd = N``).
    - ``mask [B, N]`` (bool or 0/1; True/1 = masked by the encoder = supervised), in token order; or ``weights
      [B, Nd]`` per ``pred`` row. The loss is ``sum(w * mse_row) / sum(w)``.
    - ``target`` (required): ``"videomae"`` (VideoMAE / V2 ``normalize_target``: per patch and channel,
      ``(x - mean) / (std + 1e-6)``), ``"mae"`` (MAE ``norm_pix_loss``: per patch over all its pixels and channels,
      ``(x - mean) / sqrt(var + 1e-6)``) or ``"raw"`` (the pixels); unbiased statistics.
    - ``mean``/``std``: the per-channel normalisation ``video`` carries, undone before the target is made (VideoMAE:
      :data:`IMAGENET_DEFAULT_MEAN` / :data:`IMAGENET_DEFAULT_STD`); None: ``video`` is used as it is (MAE).
    """
    if target not in TARGETS:
        raise ValueError(
            f"recon_loss needs target= one of {sorted(TARGETS)}, got {target!r}: 'videomae' (VideoMAE/V2 "
            f"normalize_target: per patch and channel, (x - mean) / (std + 1e-6)), 'mae' (MAE norm_pix_loss: per patch "
            f"over pixels and channels, (x - mean) / sqrt(var + 1e-6)) or 'raw' (the pixels); pass mean=/std= when the "
            f"video is normalised and the target is made from un-normalised pixels (VideoMAE: IMAGENET_DEFAULT_MEAN / "
            f"IMAGENET_DEFAULT_STD), leave them out to use the video as it is (MAE)")
    if (mean is None) != (std is None):
        raise ValueError("pass both mean= and std= (the normalisation the video carries), or neither")
    if video.ndim == 4:
        if tubelet_size != 1:
            raise ValueError(f"images [B, 3, H, W] have one frame: pass tubelet_size=1 (got {tubelet_size})")
        video = video.unsqueeze(2)
    B, N = checks.check_video(video, patch_size, tubelet_size, "the fused loss takes RGB")
    Nd = pred.shape[1] if pred.ndim == 3 else -1
    if dec_ids is None:
        dec_ids = torch.arange(N, device=pred.device).expand(B, N)
    elif dec_ids.ndim == 2 and dec_ids.shape[1] == N and (dec_ids.dtype == torch.bool or dec_ids.is_floating_point()):
        dec_ids = mask_to_ids(dec_ids, Nd)
    if (mask is None) == (weights is None):
        raise ValueError("pass the encoder mask ([B, N], True/1 = masked = supervised) or weights= ([B, Nd], one "
                         "per pred row), exactly one of them")
    if mask is not None:
        if tuple(mask.shape) != (B, N):
            raise ValueError(f"mask has shape {tuple(mask.shape)}; expected [B, N] = [{B}, {N}] in token order "
                             f"(True/1 = masked = supervised); per-row weights [B, Nd] go in weights=")
        weights = torch.gather(mask != 0, 1, dec_ids)
    weights = weights.to(checks.accumulator(pred.dtype))
    return ops.recon_loss(pred, video, dec_ids, weights, patch_size, tubelet_size, TARGETS[target],
                          [float(m) for m in mean] if mean is not None else [0.0] * 3,
                          [float(s) for s in std] if std is not None else [1.0] * 3, backend)
