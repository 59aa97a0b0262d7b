"""Triton helpers shared by the op families' kernels (imported only when Triton is importable): the launch wrapper
(device guard), the CUDA-graph-safe autotuned launch, autotune configs from the tiles, and the row-block tile of the
row-copy kernels (its grid and its program-side indices).

Conventions of every family's kernels: last dims contiguous (launchers make them so), ids int64 ``[B, K]`` unique per
row, program ids widened to int64 before address arithmetic, accumulation in fp32.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from vmae2_kernels.tiles import ROW_TILES, check_grid

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def cpu_bench(kernel_call, quantiles=None, **_):
    """Autotune timer for the interpreter, which has no GPU benchmarker (speed is meaningless there)."""
    kernel_call()
    return [1.0, 1.0, 1.0] if quantiles else 1.0


def device_guard(device: torch.device):
    """Make ``device`` current for a launch: Triton launches on the current CUDA device, not the tensors'."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def launcher(fn):
    """Run the launcher ``fn`` under :func:`device_guard` of its first tensor argument's device."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        first = next(a for a in args if isinstance(a, torch.Tensor))
        with device_guard(first.device):
            return fn(*args, **kwargs)
    return run


def capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on ``device``'s current stream (never on a CPU tensor)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def tuned_launch(kernel, grid, device: torch.device, *args, **kwargs) -> None:
    """Launch the autotuned ``kernel`` (its positional ``args``, constexpr ``kwargs``) on ``grid``.

    Outside a CUDA graph capture: the autotuner (it times every candidate on the first call per key, a host sync).
    During a capture, where timing cannot run (nor sync): the autotuner's pick for this key when it has one, else
    the default (first) candidate of the tile list, launched directly; the pick is not cached, so a later call
    outside the capture still tunes. Call the op once outside the capture (the usual warm-up) to run the tuned tile:
    a capture cannot compile either, so a shape whose Triton specialisation (integers divisible by 16 or not) was
    never launched needs that warm-up in any case.
    """
    if not capturing(device):
        kernel[grid](*args, **kwargs)
        return
    named = dict(zip(kernel.arg_names, args))
    key = tuple([named[k] for k in kernel.keys if k in named] + [str(a.dtype) for a in args if hasattr(a, "dtype")])
    config = kernel.cache.get(key, kernel.configs[0])
    kernel.fn[grid](*args, **kwargs, **config.all_kwargs())


def configs(tiles):
    """Autotune configs from a ``tiles`` module's ``(block kwargs, num_warps, num_stages, reason)``
    candidates; a single config under the interpreter."""
    configs = [triton.Config(kw, num_warps=w, num_stages=s) for kw, w, s, _ in tiles]
    return configs[:1] if INTERPRET else configs


# The row-copy tiles (vmae2_kernels.tiles.ROW_TILES), shared by the gather and decoder-input kernels.
ROW_CONFIGS = configs(ROW_TILES)
autotune_bench = cpu_bench if INTERPRET else None  # the autotuner's timer: the interpreter has no GPU benchmarker


def row_grid(B, K, C, op: str):
    """Axis 0: the ``B * cdiv(K, BLOCK_K)`` row blocks (up to 2^31 - 1 programs); axis 1: the column blocks."""
    return lambda meta: check_grid((B * triton.cdiv(K, meta["BLOCK_K"]), triton.cdiv(C, meta["BLOCK_C"])), op)


@triton.jit
def row_block(rows, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's tile of a :func:`row_grid` launch over ``[B, rows, C]``: ``(b, r, c)``, the sample (int64; axis 0
    is ``b * cdiv(rows, BLOCK_K) + block of rows``), its ``BLOCK_K`` row indices and its ``BLOCK_C`` column indices."""
    blocks = tl.cdiv(rows, BLOCK_K)
    b = (tl.program_id(0) // blocks).to(tl.int64)
    r = (tl.program_id(0) % blocks) * BLOCK_K + tl.arange(0, BLOCK_K)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return b, r, c


@triton.jit
def token_cell(ids_ptr, row, K, HP, WP):
    """Program ``row = b * K + k`` of a one-program-per-token launch over ``ids [B, K]``: ``(b, t, h, w)``, the sample
    and the ``(t, h, w)`` grid cell of token ``ids[b, k]`` on a ``(T', HP, WP)`` grid (int64)."""
    n = tl.load(ids_ptr + row).to(tl.int64)
    return row // K, n // (HP * WP), (n // WP) % HP, n % WP
