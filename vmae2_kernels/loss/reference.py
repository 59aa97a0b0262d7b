"""Plain-PyTorch references of the fused loss and its targets (the specification).

Sums (loss, targets) accumulate in :func:`vmae2_kernels.checks.accumulator` of the input's dtype: fp32 for fp32 /
bf16 / fp16 inputs, fp64 throughout for fp64 inputs.
"""
from __future__ import annotations

from typing import Sequence

import torch

from vmae2_kernels.checks import accumulator


def patchify(video: torch.Tensor, patch_size: int, tubelet_size: int = 2) -> torch.Tensor:
    """``[B, C, T, H, W] -> [B, N, tubelet*p*p, C]``: tokens in ``(t, h, w)`` order, pixels ``(p0 p1 p2)``."""
    B, C, T, H, W = video.shape
    if T % tubelet_size or H % patch_size or W % patch_size:
        raise ValueError(f"video {tuple(video.shape)} is not divisible into {tubelet_size}x{patch_size}x"
                         f"{patch_size} tubelets")
    t, h, w = T // tubelet_size, H // patch_size, W // patch_size
    x = video.reshape(B, C, t, tubelet_size, h, patch_size, w, patch_size).permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(B, t * h * w, tubelet_size * patch_size * patch_size, C)


# Loss targets, as the ops take them (``target: int``); ``vmae2_kernels.recon_loss`` takes the names.
TARGETS = {"raw": 0, "videomae": 1, "mae": 2}
EPS = 1e-6  # both normalisations' epsilon (VideoMAE: added to the std; MAE: added to the variance)


def normalize_patches(patches: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """VideoMAE's target: per patch and channel over dim -2 (pixels), unbiased std, ``eps`` added to the std.

    Written as the two-pass sums the fused kernel computes.
    """
    n = patches.shape[-2]
    mean = patches.sum(dim=-2, keepdim=True) / n
    centred = patches - mean
    std = (centred.square().sum(dim=-2, keepdim=True) / (n - 1)).sqrt()
    return centred / (std + eps)


def normalize_patches_whole(patches: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """MAE's ``norm_pix_loss`` target: per patch over all its pixels and channels (dims -2 and -1) together,
    unbiased variance, ``eps`` added to the variance inside the square root. Two-pass sums, as the kernels."""
    n = patches.shape[-2] * patches.shape[-1]
    mean = patches.sum(dim=(-2, -1), keepdim=True) / n
    centred = patches - mean
    var = centred.square().sum(dim=(-2, -1), keepdim=True) / (n - 1)
    return centred / (var + eps).sqrt()


def recon_target(video: torch.Tensor, dec_ids: torch.Tensor, patch_size: int, tubelet_size: int,
                 target: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Targets ``[B, Nd, tubelet*p*p*C]`` (layout ``(p0 p1 p2 c)``) of the tokens ``dec_ids``, in
    :func:`accumulator` of the video's dtype (fp32; fp64 for an fp64 video).

    Gather the ``Nd`` patches (nothing else is copied), un-normalise (``x*std + mean`` per channel, python floats:
    no host-to-device copy; mean 0 / std 1 leave the values as they are), then ``target`` (:data:`TARGETS`): 0 the
    pixels, 1 :func:`normalize_patches`, 2 :func:`normalize_patches_whole`.
    """
    B, C, T, H, W = video.shape
    t, h, w, p = T // tubelet_size, H // patch_size, W // patch_size, patch_size
    view = video.reshape(B, C, t, tubelet_size, h, p, w, p).permute(0, 2, 4, 6, 3, 5, 7, 1)  # no copy
    rows = torch.arange(B, device=video.device)[:, None]
    patches = view[rows, dec_ids // (h * w), (dec_ids // w) % h, dec_ids % w]  # copies only the Nd patches
    P = tubelet_size * p * p
    patches = patches.reshape(B, -1, P, C)
    acc = accumulator(video.dtype)
    patches = torch.stack([patches[..., c].to(acc) * std[c] + mean[c] for c in range(C)], dim=-1)
    if target == TARGETS["videomae"]:
        patches = normalize_patches(patches)
    elif target == TARGETS["mae"]:
        patches = normalize_patches_whole(patches)
    return patches.reshape(B, dec_ids.shape[1], P * C)


def recon_loss(pred: torch.Tensor, video: torch.Tensor, dec_ids: torch.Tensor, weights: torch.Tensor,
               patch_size: int, tubelet_size: int, target: int, mean: Sequence[float],
               std: Sequence[float]) -> torch.Tensor:
    """``sum(weights * mean_P((pred - target)^2)) / sum(weights)``: the official loss, a scalar in
    ``accumulator(pred)`` (fp32; fp64 for an fp64 ``pred``, with an fp64 video's targets made in fp64).

    ``pred [B, Nd, P]`` any float dtype, ``weights [B, Nd]`` (1 = encoder-masked, i.e. supervised).
    """
    acc = accumulator(pred.dtype)
    goal = recon_target(video, dec_ids, patch_size, tubelet_size, target, mean, std).to(acc)
    per_token = (pred.to(acc) - goal).pow(2).mean(dim=-1)
    w = weights.to(acc)
    return (per_token * w).sum() / w.sum()


def recon_loss_backward(grad_out: torch.Tensor, pred: torch.Tensor, video: torch.Tensor, dec_ids: torch.Tensor,
                        weights: torch.Tensor, patch_size: int, tubelet_size: int, target: int,
                        mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Gradient of :func:`recon_loss` w.r.t. ``pred``: ``2 (pred - target) w / (P sum(w)) * grad_out``, computed in
    ``accumulator(pred)``, returned in ``pred``'s dtype."""
    acc = accumulator(pred.dtype)
    goal = recon_target(video, dec_ids, patch_size, tubelet_size, target, mean, std).to(acc)
    w = weights.to(acc)
    scale = grad_out.to(acc) * 2.0 / (pred.shape[-1] * w.sum())
    return ((pred.to(acc) - goal) * (w[..., None] * scale)).to(pred.dtype)
