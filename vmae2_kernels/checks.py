"""The validation layer of the ``vmae2::`` ops: run before dispatch, so every backend refuses the same input with
the same message (the native binding keeps its own checks in ``csrc/vmae2_checks.h`` for direct callers).

Host-side checks only (shapes, dtypes, devices, grid parity): nothing here reads a tensor's values, so nothing
syncs. The ids precondition, ``0 <= id < N`` and unique within a row (in any order: every op is row-independent),
is the caller's guarantee (the mask builders give it, ascending); with ``VMAE2_DEBUG=1`` it is also checked on the
device (:func:`check_ids_values`,
``torch._assert_async``: asynchronous on CUDA, where a violation is a device-side assert; immediate on CPU).
Without the guarantee the fused kernels read or write out of bounds (range) and their scatter keeps one write per
repeated id where the reference adds them (uniqueness).
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

DEBUG_ENV = "VMAE2_DEBUG"


def debug() -> bool:
    """Whether ``VMAE2_DEBUG=1``: check id values on the device (costs a sort per id tensor; not for speed runs)."""
    return os.environ.get(DEBUG_ENV) == "1"


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


def check_device(like: Tensor, **tensors: Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != like.device:
            raise ValueError(f"{name} is on {t.device}, expected {like.device} (every input of an op on one device)")


def check_rows(x: Tensor, name: str, layout: str) -> tuple[int, int, int]:
    """``x`` is a 3-d ``layout`` (e.g. ``[B, N, C]``) tensor with at least one channel; returns its shape."""
    if x.ndim != 3:
        raise ValueError(f"{name} must be {layout}, got shape {_shape(x)}")
    check_channels(x.shape[2], f"{name} {layout}")
    return tuple(x.shape)


def check_channels(channels: int, what: str) -> None:
    """``channels >= 1`` (an empty channel dimension has nothing to copy or normalise; the kernels divide by it)."""
    if channels < 1:
        raise ValueError(f"{what} has {channels} channels; the channel dimension must be >= 1")


def check_ids(ids: Tensor, batch: int, name: str, like: Tensor, length: int | None = None) -> int:
    """``ids [batch, K]`` int64 on ``like``'s device (``K == length`` when given); returns ``K``."""
    want = f"[B={batch}, {'K' if length is None else length}]"
    if ids.ndim != 2 or ids.shape[0] != batch or ids.dtype != torch.int64 or (
            length is not None and ids.shape[1] != length):
        raise ValueError(f"{name} must be {want} int64, got {_shape(ids)} {ids.dtype}")
    check_device(like, **{name: ids})
    return ids.shape[1]


def check_ids_values(ids: Tensor, num_tokens: int, name: str) -> None:
    """Debug mode only: ``0 <= ids < num_tokens`` and no id repeated within a row, asserted on the device."""
    if not debug() or ids.numel() == 0:
        return
    in_range = (ids.min() >= 0) & (ids.max() < num_tokens)
    torch._assert_async(in_range, f"{name} has ids outside [0, {num_tokens}) (VMAE2_DEBUG=1 check)")
    ordered = ids.sort(dim=1).values
    unique = (ordered[:, 1:] != ordered[:, :-1]).all()
    torch._assert_async(unique, f"{name} repeats an id within a row; ids must be unique per row (VMAE2_DEBUG=1 check)")


def pos_rows(pos: Tensor, num_tokens: int | None, channels: int, num_prefix: int = 0) -> Tensor:
    """A position table as its ``[P + N, C]`` rows (a view where possible), ``P = num_prefix``: accepts ``[P + N, C]``
    and a codebase's ``[1, P + N, C]`` parameter (``num_tokens=None``: any ``N``); refuses any other shape, naming
    the accepted ones."""
    shape = _shape(pos)
    rows = None if num_tokens is None else num_prefix + num_tokens
    if (len(shape) == 2 or (len(shape) == 3 and shape[0] == 1)) and shape[-1] == channels and (
            rows is None or shape[-2] == rows):
        return pos.reshape(shape[-2], channels)
    n = "N" if rows is None else rows
    what = "N token rows" if rows is None else f"N={num_tokens} token rows"
    what = f"P={num_prefix} prefix rows, then {what}" if num_prefix else what
    raise ValueError(f"pos must be [{n}, {channels}] or [1, {n}, {channels}] ({what}, C={channels} channels), "
                     f"got {shape}")


def check_prefix(num_prefix: int, length: int, name: str) -> None:
    """``0 <= num_prefix <= length`` (the rows of ``name``)."""
    if not 0 <= num_prefix <= length:
        raise ValueError(f"num_prefix={num_prefix} must be in [0, {length}] (the leading cls/register rows of {name})")


def decoder_tokens(pos: Tensor, channels: int, num_prefix: int, num_tokens: int | None, num_visible: int) -> int:
    """``N``, the tokens of a decoder table ``pos`` of ``P + N`` rows (``P = num_prefix``), at least the
    ``num_visible`` ids; with ``num_tokens`` given the rows must be ``P + num_tokens`` (a cls row that ``num_prefix``
    does not count is refused, naming the table)."""
    rows = pos_rows(pos, None, channels).shape[0]
    check_prefix(num_prefix, rows, "pos")
    if num_tokens is not None and rows != num_prefix + num_tokens:
        raise ValueError(f"pos {_shape(pos)} has {rows} rows; num_tokens={num_tokens} and num_prefix={num_prefix} "
                         f"need {num_prefix + num_tokens} (the prefix rows, then one per token): for a table whose "
                         f"first row is a cls token's, pass num_prefix=1 with x_vis starting with that token, or pass "
                         f"the table without it (pos[:, 1:])")
    if num_visible > rows - num_prefix:
        raise ValueError(f"vis_ids has {num_visible} ids per sample but pos {_shape(pos)} with num_prefix={num_prefix} "
                         f"has rows for {rows - num_prefix} tokens")
    return rows - num_prefix


# -- per op -------------------------------------------------------------------------------------------------

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


def check_decoder_input(x_vis: Tensor, vis_ids: Tensor, dec_ids: Tensor, mask_token: Tensor, pos: Tensor) -> None:
    B, Nv, D = check_rows(x_vis, "x_vis", "[B, Nv, D]")
    check_ids(vis_ids, B, "vis_ids", x_vis, Nv)
    check_ids(dec_ids, B, "dec_ids", x_vis)
    if mask_token.numel() != D:
        raise ValueError(f"mask_token must have D={D} elements, got {_shape(mask_token)}")
    N = pos_rows(pos, None, D).shape[0]
    check_device(x_vis, mask_token=mask_token, pos=pos)
    check_ids_values(vis_ids, N, "vis_ids")
    check_ids_values(dec_ids, N, "dec_ids")


def check_mask_token_grad(grad: Tensor, num_visible: int) -> None:
    _, L, _ = check_rows(grad, "grad", "[B, L, D]")
    if not 0 <= num_visible <= L:
        raise ValueError(f"num_visible {num_visible} is out of range [0, {L}]")


def check_even_grid(H: int, W: int) -> None:
    if H % 2 or W % 2:
        raise ValueError(f"running-cell masking needs an even spatial grid, got H'={H}, W'={W} "
                         f"(the 2x2 cell must tile the frame; use an image size giving even H'/W')")


def check_running_cell(phase: Tensor, T: int, H: int, W: int, masked_per_cell: int) -> Tensor:
    """Validated ``phase`` as int64 in 0..3 (any integer phase taken modulo 4 on its device: no sync)."""
    check_even_grid(H, W)
    if T < 1 or not 0 <= masked_per_cell <= 4:
        raise ValueError(f"T'={T} must be >= 1 and masked_per_cell={masked_per_cell} in 0..4")
    if phase.ndim != 1 or phase.dtype.is_floating_point or phase.dtype == torch.bool:
        raise ValueError(f"phase must be a [B] integer tensor, got {_shape(phase)} {phase.dtype}")
    return phase.long().remainder(4)


def check_tube(keys: Tensor, num_frames: int, num_masked: int) -> None:
    if keys.ndim != 2 or not keys.dtype.is_floating_point:
        raise ValueError(f"keys must be a [B, H'W'] float tensor, got {_shape(keys)} {keys.dtype}")
    if num_frames < 1 or not 0 <= num_masked <= keys.shape[1]:
        raise ValueError(f"num_frames={num_frames} must be >= 1 and num_masked={num_masked} in "
                         f"[0, {keys.shape[1]}]")


def check_video(video: Tensor, patch_size: int, tubelet_size: int, why: str) -> tuple[int, int]:
    """``video [B, 3, T, H, W]`` tiles into tubelets of ``tubelet_size`` frames and ``patch_size`` pixels squared;
    returns ``(B, N)``, ``N`` the tubelets of its grid. ``why`` says why RGB (in the message)."""
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be [B, 3, T, H, W] ({why}), got shape {_shape(video)}")
    B, _, T, H, W = video.shape
    if patch_size < 1 or tubelet_size < 1 or T % tubelet_size or H % patch_size or W % patch_size:
        raise ValueError(f"video {_shape(video)} does not tile into tubelets of {tubelet_size} frames and "
                         f"{patch_size}x{patch_size} patches")
    return B, (T // tubelet_size) * (H // patch_size) * (W // patch_size)


def check_tubelet_gather(video: Tensor, ids: Tensor, patch_size: int, tubelet_size: int) -> None:
    """``video [B, 3, T, H, W]`` tiling into tubelets, ``ids [B, K]`` int64 on its device."""
    B, N = check_video(video, patch_size, tubelet_size, "RGB clips")
    check_ids(ids, B, "ids", video)
    check_ids_values(ids, N, "ids")


def check_patch_embed(video: Tensor, weight: Tensor, bias: Tensor | None, pos: Tensor | None) -> tuple[int, int]:
    """``weight [C, 3, t, p, p]`` (a Conv3d's, kernel = stride), ``bias [C]`` and ``pos [N, C]`` (each or None) on
    ``video``'s device, ``N`` the tubelets of the video's grid; returns ``(p, t)``. ``ids`` are the op's to check."""
    if weight.ndim != 5 or weight.shape[1] != 3 or weight.shape[3] != weight.shape[4]:
        raise ValueError(f"weight must be a Conv3d weight [C, 3, t, p, p], got shape {_shape(weight)}")
    C, _, t, p, _ = weight.shape
    check_channels(C, "weight [C, 3, t, p, p]")
    _, N = check_video(video, p, t, "RGB clips")
    if bias is not None and _shape(bias) != (C,):
        raise ValueError(f"bias must be [C] = [{C}], got {_shape(bias)}")
    if pos is not None:
        pos_rows(pos, N, C)
    check_device(video, weight=weight, bias=bias, pos=pos)
    return p, t


def check_loss(pred: Tensor, video: Tensor, dec_ids: Tensor, weights: Tensor, patch_size: int, tubelet_size: int,
               target: int, mean: list[float], std: list[float]) -> None:
    """``pred [B, Nd, 3*tubelet*p*p]``, ``video [B, 3, T, H, W]``, ``dec_ids [B, Nd]`` int64, ``weights [B, Nd]``,
    ``target`` one of ``reference.TARGETS``' values, 3-value ``mean`` / ``std``, all on ``pred``'s device."""
    if target not in (0, 1, 2):
        raise ValueError(f"target {target} is unknown; use 0 (raw pixels), 1 (VideoMAE: per patch and channel) or 2 "
                         f"(MAE: per patch)")
    B, N = check_video(video, patch_size, tubelet_size, "the fused loss takes RGB")
    C = 3  # checked by check_video
    Nd = check_ids(dec_ids, B, "dec_ids", pred)
    width = C * tubelet_size * patch_size * patch_size
    if _shape(pred) != (B, Nd, width):
        raise ValueError(f"pred has shape {_shape(pred)}; expected [B, Nd, C*tubelet*p*p] = [{B}, {Nd}, {width}] "
                         f"for {C} channels, tubelet_size {tubelet_size} and patch_size {patch_size}")
    if _shape(weights) != (B, Nd):
        raise ValueError(f"weights has shape {_shape(weights)}; expected [B, Nd] = [{B}, {Nd}] "
                         f"(one per decoder-visible token)")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (one per channel), got {mean} and {std}")
    check_device(pred, video=video, weights=weights)
    check_ids_values(dec_ids, N, "dec_ids")
