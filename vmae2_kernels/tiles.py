"""Launch limits shared by every op family, and the row-copy tiles the gather and decoder-input kernels share (pure
Python: no torch, no Triton). Each family's own launch configuration is its ``tiles`` module
(:mod:`vmae2_kernels.gather.tiles`, :mod:`vmae2_kernels.masks.tiles`, :mod:`vmae2_kernels.loss.tiles`);
:mod:`vmae2_kernels.triton_common` builds the autotune lists from them; the roofline model and the compile report
(``benchmarks/gpu/roofline.py``, ``benchmarks/gpu/report.py``) analyse exactly these.

Each autotune entry: ``(block sizes, num_warps, num_stages, reason)``. num_stages is 1: these kernels have no loop,
and Triton pipelines loops only, so a larger value changes nothing but the cache key.
"""
from __future__ import annotations


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# CUDA's largest launch grid per axis (x, y, z): axis 0 takes up to 2^31 - 1 programs, axes 1 and 2 only 65535, so
# the launchers put the counts that grow with the batch and the token count (B * K, B * Nd) on axis 0.
MAX_GRID = (2 ** 31 - 1, 65535, 65535)

# Triton's largest block (elements of one tl.arange / tensor).
MAX_BLOCK = 2 ** 20


def check_grid(grid: tuple, op: str) -> tuple:
    """``grid`` itself when every axis is within :data:`MAX_GRID`; else a ValueError naming the axis and its size."""
    for axis, (n, most) in enumerate(zip(grid, MAX_GRID)):
        if n > most:
            raise ValueError(f"{op}: launch grid axis {axis} needs {n} programs, above CUDA's {most}; split the "
                             f"batch into smaller calls")
    return grid


# What the roofline model says (python -m benchmarks.gpu.report --predict): at batch 32 every row-copy and loss
# candidate is bandwidth-bound with a full wave or more and 10-20x the bytes in flight Little's law asks
# (A100: 1.9 TB/s x 600 ns / 108 SMs = 10.6 KB per SM; H100: 3.0 TB/s x 550 ns / 132 SMs = 12.5 KB per SM), so
# all of them are predicted at the same time on both GPUs, and the same list serves the A100 and the H100. The
# candidates are therefore the few that (a) never leave lanes idle at any ViT width or row count, (b) keep the
# registers low enough for high occupancy (the margin against the unmodelled: DRAM refresh, L2 misses on the
# position table, other streams), (c) keep the autotune sweep short (each config compiles and benchmarks on the
# first call per key). Rejected: 32 x 128 (56 registers in fp32, 9 CTAs/SM; 32 does not divide 208, 944 or 1232
# rows), 8 x 512 (512 leaves 25 % of the lanes idle at widths 768/384 and 9 % at 1408), 64 x 64 (the most index
# work per byte: 64 int64 ids per 8 KB tile).

ROW_TILES = (
    ({"BLOCK_K": 16, "BLOCK_C": 256}, 4, 1,
     "the default (first; the interpreter runs it, and so does a CUDA graph capture for a key not yet tuned): "
     "32 elements/thread = 4 (bf16) or 8 (fp32) 128-bit loads in "
     "flight per thread and stream; 256 divides the widths 512/768/1024 and 16 every row count (Nv = 160/208, "
     "Nv + Nd = 944/1232); 32-40 registers in bf16 (full occupancy with 4 warps)."),
    ({"BLOCK_K": 16, "BLOCK_C": 128}, 4, 1,
     "128 divides every width (384, 512, 768, 1024, 1408 = 11 x 128): no idle lane for ViT-g's encoder rows and "
     "the 384-wide ViT-B decoder; 16 elements/thread: 22-56 registers, the highest occupancy of the set (fp32)."),
    ({"BLOCK_K": 16, "BLOCK_C": 256}, 8, 1,
     "the 4-warp tile with 8 warps: 16 elements/thread, 32 registers in fp32 where 4 warps need 48-56 (full "
     "occupancy instead of 9-10 CTAs/SM); for the H100, whose 3.0 TB/s needs the most bytes in flight."),
)
