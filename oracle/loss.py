"""The official reconstruction target and loss (reference section 3).

Target: un-normalise the clip (ImageNet mean / std), cut it into tubelet patches
``b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c``, normalise each patch per channel over its pixels with the
unbiased std and ``1e-6`` added to the std, flatten to ``(p0 p1 p2 c)`` (channel fastest). Loss: labels are the
targets of the decoder-visible tokens (``~dec_mask``), per-token MSE, weights ``enc_mask[~dec_mask]`` (1 =
encoder-masked), one weighted mean over the whole batch.

Non-default keyword values are wrong variants, there so that tests can show a comparison would notice them.
"""
from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TUBELET = 2
EPS = 1e-6


def to_patches(video: torch.Tensor, patch: int, tubelet: int = TUBELET) -> torch.Tensor:
    """``b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c`` with reshape/permute."""
    b, c, t, h, w = video.shape
    x = video.reshape(b, c, t // tubelet, tubelet, h // patch, patch, w // patch, patch)
    # dims: 0 b, 1 c, 2 t', 3 p0, 4 h', 5 p1, 6 w', 7 p2
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(b, (t // tubelet) * (h // patch) * (w // patch), tubelet * patch * patch, c)


def official_targets(video: torch.Tensor, patch: int, tubelet: int = TUBELET, *, normalize: bool = True,
                     unbiased: bool = True, eps_in_sqrt: bool = False) -> torch.Tensor:
    """Targets of **all** N tokens ``[B, N, tubelet*p*p*3]`` in ``video``'s dtype, no grad.

    ``video [B, 3, T, H, W]`` ImageNet-normalised. ``normalize=False``: the un-normalised pixels.
    """
    with torch.no_grad():
        mean = torch.tensor(IMAGENET_MEAN, dtype=video.dtype, device=video.device)[None, :, None, None, None]
        std = torch.tensor(IMAGENET_STD, dtype=video.dtype, device=video.device)[None, :, None, None, None]
        patches = to_patches(video * std + mean, patch, tubelet)  # [B, N, P', 3]
        if normalize:
            var = patches.var(dim=-2, unbiased=unbiased, keepdim=True)
            denom = (var + EPS).sqrt() if eps_in_sqrt else var.sqrt() + EPS
            patches = (patches - patches.mean(dim=-2, keepdim=True)) / denom
        return patches.flatten(2)  # (p c): channel fastest


def decoded(target: torch.Tensor, dec_mask: torch.Tensor) -> torch.Tensor:
    """``target[~dec_mask]`` as ``[B, N_dv, P]``: the labels of the decoder-visible tokens."""
    return target[~dec_mask].reshape(target.shape[0], -1, target.shape[-1])


def weighted_mse(pred: torch.Tensor, labels: torch.Tensor, enc_mask: torch.Tensor, dec_mask: torch.Tensor, *,
                 reduction: str = "global", weights: str = "encoder_masked") -> torch.Tensor:
    """The engine's loss of ``pred`` on ``labels`` (``[B, N_dv, P]``): per-token MSE, weights
    ``enc_mask[~dec_mask]``, one weighted mean over the batch."""
    per_token = ((pred - labels) ** 2).mean(dim=-1)  # [B, N_dv]
    if weights == "encoder_masked":
        w = enc_mask[~dec_mask].reshape(pred.shape[0], -1).to(per_token.dtype)
    elif weights == "all":
        w = torch.ones_like(per_token)
    else:
        raise ValueError(weights)
    if reduction == "global":
        return (per_token * w).sum() / w.sum()
    if reduction == "per_sample":
        return ((per_token * w).sum(1) / w.sum(1)).mean()
    raise ValueError(reduction)


def official_loss(pred: torch.Tensor, video: torch.Tensor, enc_mask: torch.Tensor, dec_mask: torch.Tensor,
                  patch: int, tubelet: int = TUBELET, *, unbiased: bool = True, eps_in_sqrt: bool = False,
                  reduction: str = "global", weights: str = "encoder_masked") -> torch.Tensor:
    """The official loss of ``pred [B, N_dv, P]`` on ``video``; masks ``[B, N]`` bool, True = masked."""
    labels = decoded(official_targets(video, patch, tubelet, unbiased=unbiased, eps_in_sqrt=eps_in_sqrt), dec_mask)
    return weighted_mse(pred, labels, enc_mask, dec_mask, reduction=reduction, weights=weights)
