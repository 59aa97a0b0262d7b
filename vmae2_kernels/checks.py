"""Checks and dtype conventions shared by every op family; each family's per-op checks (its ``checks`` module,
e.g. :mod:`vmae2_kernels.gather.checks`) are built from these and run by :mod:`vmae2_kernels.ops` before dispatch,
so every backend refuses the same input with the same message (the native binding keeps its own checks in
``csrc/vmae2_checks.h`` for direct callers).

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


def shape_of(t: Tensor) -> tuple:
    return tuple(t.shape)


def check_device(like: Tensor, **tensors: Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != like.device:
            raise ValueError(f"{name} is on {t.device}, expected {like.device} (every input of an op on one device)")


def check_rows(x: Tensor, name: str, layout: str) -> tuple[int, int, int]:
    """``x`` is a 3-d ``layout`` (e.g. ``[B, N, C]``) tensor with at least one channel; returns its shape."""
    if x.ndim != 3:
        raise ValueError(f"{name} must be {layout}, got shape {shape_of(x)}")
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
        raise ValueError(f"{name} must be {want} int64, got {shape_of(ids)} {ids.dtype}")
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
    shape = shape_of(pos)
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


def check_video(video: Tensor, patch_size: int, tubelet_size: int, why: str) -> tuple[int, int]:
    """``video [B, 3, T, H, W]`` tiles into tubelets of ``tubelet_size`` frames and ``patch_size`` pixels squared;
    returns ``(B, N)``, ``N`` the tubelets of its grid. ``why`` says why RGB (in the message)."""
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be [B, 3, T, H, W] ({why}), got shape {shape_of(video)}")
    B, _, T, H, W = video.shape
    if patch_size < 1 or tubelet_size < 1 or T % tubelet_size or H % patch_size or W % patch_size:
        raise ValueError(f"video {shape_of(video)} does not tile into tubelets of {tubelet_size} frames and "
                         f"{patch_size}x{patch_size} patches")
    return B, (T // tubelet_size) * (H // patch_size) * (W // patch_size)


def accumulator(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums over ``dtype`` values run in: ``float64`` for ``float64``, else ``float32``."""
    return torch.promote_types(dtype, torch.float32)
