"""Plain-PyTorch references of the token ops: the specification every faster backend is tested against.

Conventions: tokens ``[B, N, C]`` in ``(t, h, w)`` order; ids ``[B, K]`` int64, unique within a row and in
``[0, N)``, in any order (row ``k`` of a result follows ``ids[:, k]``), the same ``K`` for every sample; a position
table ``pos [N, C]`` is shared by the batch (the ops layer turns ``[1, N, C]`` into it).

Dtypes: data movement keeps its input's dtype; sums (loss, targets, mask-token gradient) accumulate in
``promote_types(dtype, float32)``: fp32 for fp32 / bf16 / fp16 inputs, fp64 throughout for fp64 inputs.
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


def running_cell_ids(phase: torch.Tensor, grid: tuple[int, int, int], masked_per_cell: int) -> torch.Tensor:
    """Decoder-visible ids ``[B, T'H'W'(4-m)/4]`` of running-cell masks, ascending.

    ``phase [B]`` int in 0..3 is the official generator row; token ``(t, h, w)`` is masked iff
    ``(2*(h%2) + w%2 + phase + t + 1) % 4 < masked_per_cell``.
    """
    t, h, w = grid
    dev = phase.device
    slot = (2 * (torch.arange(h, device=dev)[:, None] % 2) + torch.arange(w, device=dev)[None, :] % 2).flatten()
    code = slot[None, :] + torch.arange(t, device=dev)[:, None] + 1
    mask = ((code[None] + phase.long()[:, None, None]) % 4 < masked_per_cell).reshape(phase.shape[0], -1)
    kept = t * h * w * (4 - masked_per_cell) // 4
    return torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :kept].contiguous()


def tube_ids(keys: torch.Tensor, num_frames: int, num_masked: int) -> torch.Tensor:
    """Encoder-visible ids ``[B, T' * (HW - m)]`` of tube masks from random ``keys [B, HW]``.

    Per sample the ``m`` spatial positions with the smallest keys (ties: lower index first) are masked in
    every temporal slice; the ids are ascending.
    """
    B, hw = keys.shape
    spatial = torch.argsort(keys, dim=1, stable=True)[:, num_masked:].sort(dim=1).values
    offsets = torch.arange(num_frames, device=keys.device)[:, None] * hw
    return (offsets[None] + spatial[:, None, :]).reshape(B, -1)


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


def accumulator(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums over ``dtype`` values run in: ``float64`` for ``float64``, else ``float32``."""
    return torch.promote_types(dtype, torch.float32)


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


def mask_token_grad(grad: torch.Tensor, num_visible: int) -> torch.Tensor:
    """Gradient of :func:`decoder_input` w.r.t. ``mask_token``: ``grad[:, Nv:].sum((0, 1))`` ``[D]`` in
    ``accumulator(grad)`` (fp32; fp64 for an fp64 ``grad``)."""
    return grad[:, num_visible:].to(accumulator(grad.dtype)).sum(dim=(0, 1))
