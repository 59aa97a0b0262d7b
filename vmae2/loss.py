"""The VideoMAE V2 reconstruction loss (plain PyTorch; the specification for the fused kernel).

Targets are built only for the decoder-visible patches (never the full ``[B, N, P]`` tensor) and in
fp32 whatever ``pred``'s dtype. Per patch, per channel: ``(x - mean) / (std_unbiased + 1e-6)`` over the
``tubelet * p * p`` pixels, feature layout ``(p0 p1 p2 c)`` (channel fastest).
"""
from __future__ import annotations

import torch

from vmae2.masking import dual_ids, ids_to_mask

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


def patchify(video: torch.Tensor, patch_size: int, tubelet_size: int = 2) -> torch.Tensor:
    """``[B, C, T, H, W] -> [B, N, tubelet*p*p, C]`` with tokens in ``(t, h, w)`` order, pixels ``(p0 p1 p2)``."""
    B, C, T, H, W = video.shape
    if T % tubelet_size or H % patch_size or W % patch_size:
        raise ValueError(f"video {tuple(video.shape)} is not divisible into {tubelet_size}x{patch_size}x"
                         f"{patch_size} tubelets")
    t, h, w = T // tubelet_size, H // patch_size, W // patch_size
    x = video.reshape(B, C, t, tubelet_size, h, patch_size, w, patch_size)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b t h w p0 p1 p2 c
    return x.reshape(B, t * h * w, tubelet_size * patch_size * patch_size, C)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch per-channel normalisation over dim -2 (pixels): unbiased std, ``eps`` added to the std."""
    mean = patches.mean(dim=-2, keepdim=True)
    std = patches.var(dim=-2, unbiased=True, keepdim=True).sqrt()
    return (patches - mean) / (std + eps)


def reconstruction_target(video: torch.Tensor, dec_ids: torch.Tensor, *, patch_size: int, tubelet_size: int = 2,
                          normalize_target: bool = True, mean=IMAGENET_DEFAULT_MEAN,
                          std=IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """fp32 targets ``[B, Nd, tubelet*p*p*3]`` for the decoder-visible tokens ``dec_ids [B, Nd]``."""
    with torch.no_grad():
        x = video.float()
        shape = (1, -1, 1, 1, 1)
        x = x * torch.as_tensor(std, dtype=x.dtype, device=x.device).view(shape) \
            + torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(shape)
        patches = patchify(x, patch_size, tubelet_size)  # [B, N, P, C] (a view until gathered)
        B, _, P, C = patches.shape
        idx = dec_ids[:, :, None, None].expand(-1, -1, P, C)
        patches = torch.gather(patches, 1, idx)
        if normalize_target:
            patches = normalize_patches(patches)
        return patches.reshape(B, dec_ids.shape[1], P * C)


def reconstruction_loss(pred: torch.Tensor, video: torch.Tensor, encoder_mask: torch.Tensor,
                        decoder_mask: torch.Tensor | None, *, patch_size: int, tubelet_size: int = 2,
                        normalize_target: bool = True, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                        loss_on: str = "encoder_masked") -> torch.Tensor:
    """Official VideoMAE V2 loss: MSE on the decoder-visible tokens that the encoder masked, global mean.

    Args:
        pred: ``[B, Nd, tubelet*p*p*3]`` decoder output, any float dtype (upcast to fp32).
        video: ``[B, 3, T, H, W]`` ImageNet-normalised input clip.
        encoder_mask: ``[B, N]`` bool (True = masked) or encoder-visible ids ``[B, Nv]``.
        decoder_mask: ``[B, N]`` bool (True = not reconstructed) or decoder-visible ids ``[B, Nd]``;
            ``None`` = VideoMAE v1 (every encoder-masked token is reconstructed).
        loss_on: ``"encoder_masked"`` (official) or ``"all"`` (the paper's ablation: every decoder output).
    Returns a scalar fp32 tensor ``sum(w * mse_per_token) / sum(w)`` over the batch.
    """
    if loss_on not in ("encoder_masked", "all"):
        raise ValueError(f"loss_on {loss_on!r} is unknown; use 'encoder_masked' (official) or 'all'")
    if video.ndim != 5:
        raise ValueError(f"video must be [B, C, T, H, W], got shape {tuple(video.shape)}")
    N = (video.shape[2] // tubelet_size) * (video.shape[3] // patch_size) * (video.shape[4] // patch_size)
    enc_ids, dec_ids = dual_ids(encoder_mask, decoder_mask, N)
    if pred.shape[:2] != dec_ids.shape:
        raise ValueError(f"pred has {tuple(pred.shape[:2])} tokens but the decoder mask selects "
                         f"{tuple(dec_ids.shape)}; pred must be [B, Nd, P] for the decoder-visible tokens")
    target = reconstruction_target(video, dec_ids, patch_size=patch_size, tubelet_size=tubelet_size,
                                   normalize_target=normalize_target, mean=mean, std=std)
    per_token = (pred.float() - target).pow(2).mean(dim=-1)  # [B, Nd]
    if loss_on == "all":
        return per_token.mean()
    weight = torch.gather(ids_to_mask(enc_ids, N), 1, dec_ids).to(per_token.dtype)  # 1 = encoder-masked
    return (per_token * weight).sum() / weight.sum()
