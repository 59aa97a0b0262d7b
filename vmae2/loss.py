"""The VideoMAE V2 reconstruction loss, computed by the fused ``vmae2_kernels.recon_loss`` op.

Targets are built only for the decoder-visible patches (the fused kernel never stores them at all) and in
fp32 whatever ``pred``'s dtype. Per patch, per channel: ``(x - mean) / (std_unbiased + 1e-6)`` over the
``tubelet * p * p`` pixels, feature layout ``(p0 p1 p2 c)`` (channel fastest).
"""
from __future__ import annotations

import torch

import vmae2_kernels
from vmae2.masking import dual_ids, ids_to_mask
from vmae2_kernels import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from vmae2_kernels.loss.reference import TARGETS, normalize_patches, patchify, recon_target

__all__ = ["reconstruction_loss", "reconstruction_target", "flat_colour_loss", "patchify", "normalize_patches",
           "denormalize_patches"]


def reconstruction_target(video: torch.Tensor, dec_ids: torch.Tensor, *, patch_size: int, tubelet_size: int = 2,
                          normalize_target: bool = True, mean=IMAGENET_DEFAULT_MEAN,
                          std=IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """fp32 targets ``[B, Nd, tubelet*p*p*3]`` for the decoder-visible tokens ``dec_ids [B, Nd]``."""
    with torch.no_grad():
        return recon_target(video, dec_ids, patch_size, tubelet_size, TARGETS[target_name(normalize_target)], mean,
                            std)


def reconstruction_loss(pred: torch.Tensor, video: torch.Tensor, encoder_mask: torch.Tensor,
                        decoder_mask: torch.Tensor | None, *, patch_size: int, tubelet_size: int = 2,
                        normalize_target: bool = True, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                        loss_on: str = "encoder_masked", backend: str = "auto") -> torch.Tensor:
    """Official VideoMAE V2 loss: MSE on the decoder-visible tokens that the encoder masked, global mean.

    Args:
        pred: ``[B, Nd, tubelet*p*p*3]`` decoder output, any float dtype (upcast to fp32).
        video: ``[B, 3, T, H, W]`` ImageNet-normalised input clip.
        encoder_mask: ``[B, N]`` bool (True = masked) or encoder-visible ids ``[B, Nv]``.
        decoder_mask: ``[B, N]`` bool (True = not reconstructed) or decoder-visible ids ``[B, Nd]``;
            ``None`` = VideoMAE v1 (every encoder-masked token is reconstructed).
        loss_on: ``"encoder_masked"`` (official) or ``"all"`` (the paper's ablation: every decoder output).
        backend: kernel backend of the fused loss (see :mod:`vmae2_kernels.dispatch`).
    Returns a scalar fp32 tensor ``sum(w * mse_per_token) / sum(w)`` over the batch.
    """
    dec_ids, weights = _supervision(video, encoder_mask, decoder_mask, patch_size, tubelet_size, loss_on)
    if pred.shape[:2] != dec_ids.shape:
        raise ValueError(f"pred has {tuple(pred.shape[:2])} tokens but the decoder mask selects "
                         f"{tuple(dec_ids.shape)}; pred must be [B, Nd, P] for the decoder-visible tokens")
    return vmae2_kernels.recon_loss(pred, video, dec_ids, weights=weights, patch_size=patch_size,
                                    tubelet_size=tubelet_size, target=target_name(normalize_target), mean=mean, std=std,
                                    backend=backend)


def target_name(normalize_target: bool) -> str:
    """The official ``normalize_target`` flag as ``vmae2_kernels.recon_loss``'s ``target``."""
    return "videomae" if normalize_target else "raw"


def _supervision(video, encoder_mask, decoder_mask, patch_size: int, tubelet_size: int, loss_on: str):
    """``(dec_ids [B, Nd], weights [B, Nd] float)``: the decoded tokens and which of them the loss counts (1 =
    encoder-masked = supervised; all ones for ``loss_on="all"``)."""
    if loss_on not in ("encoder_masked", "all"):
        raise ValueError(f"loss_on {loss_on!r} is unknown; use 'encoder_masked' (official) or 'all'")
    if video.ndim != 5:
        raise ValueError(f"video must be [B, C, T, H, W], got shape {tuple(video.shape)}")
    N = (video.shape[2] // tubelet_size) * (video.shape[3] // patch_size) * (video.shape[4] // patch_size)
    enc_ids, dec_ids = dual_ids(encoder_mask, decoder_mask, N)
    if loss_on == "all":
        return dec_ids, torch.ones(dec_ids.shape, device=video.device)
    return dec_ids, torch.gather(ids_to_mask(enc_ids, N), 1, dec_ids).float()


@torch.no_grad()
def flat_colour_loss(video: torch.Tensor, encoder_mask: torch.Tensor, decoder_mask: torch.Tensor | None, *,
                     patch_size: int, tubelet_size: int = 2, normalize_target: bool = True,
                     mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, loss_on: str = "encoder_masked"
                     ) -> torch.Tensor:
    """The loss (as :func:`reconstruction_loss`, same tokens and weights) of a model that predicts every patch as
    one flat colour: the clip's mean colour for raw-pixel targets, the patch's own mean for normalised targets
    (there the prediction is 0). ``loss / flat_colour_loss`` below 1 means the model reconstructs more than
    colour; near 1, it predicts blobs. Not for the hot path: it builds the fp32 targets."""
    dec_ids, weights = _supervision(video, encoder_mask, decoder_mask, patch_size, tubelet_size, loss_on)
    target = reconstruction_target(video, dec_ids, patch_size=patch_size, tubelet_size=tubelet_size,
                                   normalize_target=normalize_target, mean=mean, std=std)
    target = target.view(*target.shape[:2], -1, video.shape[1])  # [B, Nd, pixels, C]: channel fastest
    if not normalize_target:
        m = torch.tensor(mean, device=video.device).view(1, -1)
        s = torch.tensor(std, device=video.device).view(1, -1)
        colour = video.float().mean(dim=(2, 3, 4)) * s + m  # [B, C] mean colour of each clip, in [0, 1]
        target = target - colour[:, None, None, :]
    per_token = target.square().mean(dim=(2, 3))  # [B, Nd]
    return (per_token * weights).sum() / weights.sum()


def denormalize_patches(normalized: torch.Tensor, patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Inverse of :func:`normalize_patches` with the statistics of ``patches`` (``[..., pixels, C]``, over dim -2):
    ``normalized * (std_unbiased + eps) + mean``. ``normalized`` broadcasts against ``patches``."""
    mean = patches.mean(dim=-2, keepdim=True)
    scale = patches.var(dim=-2, unbiased=True, keepdim=True).sqrt() + eps
    return normalized * scale + mean
