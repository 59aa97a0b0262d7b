"""Input checks of the gathers, run by :mod:`vmae2_kernels.ops` before dispatch (host-side: no sync)."""
from __future__ import annotations

from torch import Tensor

from vmae2_kernels.checks import (check_channels, check_device, check_ids, check_ids_values, check_rows, check_video,
                                  pos_rows, shape_of)


def check_gather(x: Tensor, ids: Tensor, pos: Tensor | None) -> None:
    B, N, C = check_rows(x, "x", "[B, N, C]")
    check_ids(ids, B, "ids", x)
    if pos is not None:
        pos_rows(pos, N, C)
    check_device(x, pos=pos)
    check_ids_values(ids, N, "ids")


def check_scatter(src: Tensor, ids: Tensor, num_tokens: int) -> None:
    B, K, _ = check_rows(src, "src", "[B, K, C]")
    check_ids(ids, B, "ids", src, K)
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    check_ids_values(ids, num_tokens, "ids")


def check_tubelet_gather(video: Tensor, ids: Tensor, patch_size: int, tubelet_size: int) -> None:
    """``video [B, 3, T, H, W]`` tiling into tubelets, ``ids [B, K]`` int64 on its device."""
    B, N = check_video(video, patch_size, tubelet_size, "RGB clips")
    check_ids(ids, B, "ids", video)
    check_ids_values(ids, N, "ids")


def check_patch_embed(video: Tensor, weight: Tensor, bias: Tensor | None, pos: Tensor | None) -> tuple[int, int]:
    """``weight [C, 3, t, p, p]`` (a Conv3d's, kernel = stride), ``bias [C]`` and ``pos [N, C]`` (each or None) on
    ``video``'s device, ``N`` the tubelets of the video's grid; returns ``(p, t)``. ``ids`` are the op's to check."""
    if weight.ndim != 5 or weight.shape[1] != 3 or weight.shape[3] != weight.shape[4]:
        raise ValueError(f"weight must be a Conv3d weight [C, 3, t, p, p], got shape {shape_of(weight)}")
    C, _, t, p, _ = weight.shape
    check_channels(C, "weight [C, 3, t, p, p]")
    _, N = check_video(video, p, t, "RGB clips")
    if bias is not None and shape_of(bias) != (C,):
        raise ValueError(f"bias must be [C] = [{C}], got {shape_of(bias)}")
    if pos is not None:
        pos_rows(pos, N, C)
    check_device(video, weight=weight, bias=bias, pos=pos)
    return p, t
