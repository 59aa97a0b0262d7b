"""Input checks of the fused loss, run by :mod:`vmae2_kernels.ops` before dispatch (host-side: no sync)."""
from __future__ import annotations

from torch import Tensor

from vmae2_kernels.checks import check_device, check_ids, check_ids_values, check_video, shape_of


def check_loss(pred: Tensor, video: Tensor, dec_ids: Tensor, weights: Tensor, patch_size: int, tubelet_size: int,
               target: int, mean: list[float], std: list[float]) -> None:
    """``pred [B, Nd, 3*tubelet*p*p]``, ``video [B, 3, T, H, W]``, ``dec_ids [B, Nd]`` int64, ``weights [B, Nd]``,
    ``target`` one of :data:`vmae2_kernels.loss.reference.TARGETS`' values, 3-value ``mean`` / ``std``, all on
    ``pred``'s device."""
    if target not in (0, 1, 2):
        raise ValueError(f"target {target} is unknown; use 0 (raw pixels), 1 (VideoMAE: per patch and channel) or 2 "
                         f"(MAE: per patch)")
    B, N = check_video(video, patch_size, tubelet_size, "the fused loss takes RGB")
    C = 3  # checked by check_video
    Nd = check_ids(dec_ids, B, "dec_ids", pred)
    width = C * tubelet_size * patch_size * patch_size
    if shape_of(pred) != (B, Nd, width):
        raise ValueError(f"pred has shape {shape_of(pred)}; expected [B, Nd, C*tubelet*p*p] = [{B}, {Nd}, {width}] "
                         f"for {C} channels, tubelet_size {tubelet_size} and patch_size {patch_size}")
    if shape_of(weights) != (B, Nd):
        raise ValueError(f"weights has shape {shape_of(weights)}; expected [B, Nd] = [{B}, {Nd}] "
                         f"(one per decoder-visible token)")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (one per channel), got {mean} and {std}")
    check_device(pred, video=video, weights=weights)
    check_ids_values(dec_ids, N, "dec_ids")
