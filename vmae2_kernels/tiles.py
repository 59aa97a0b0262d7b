"""Launch configurations of the Triton kernels, each with the reason it was chosen (pure Python: no torch, no
Triton). :mod:`vmae2_kernels.triton_ops` builds its autotune lists and launches from them; the roofline model and the
compile report (``benchmarks/roofline.py``, ``benchmarks/gpu_report.py``) analyse exactly these.

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


# What the roofline model says (python -m benchmarks.gpu_report --predict): at batch 32 every row-copy and loss
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

LOSS_TILES = (  # one fixed configuration: the loss kernels are not autotuned
    ({}, 4, 1,
     "the only one: one token per CTA, 2048-element tiles, 16 values/thread, 32-40 registers, 8-9 KB of shared "
     "memory for the pred gather and the reductions: 12 CTAs/SM (75 %) on both GPUs with ~9 KB of loads each in "
     "flight, 10x what Little's law asks. Fixed, not autotuned: a reduction's order follows the warp count, so a "
     "pick timed per process would make ranks and reruns differ in the last bits (and the timing run syncs, which "
     "a CUDA graph capture cannot contain)."),
)

# The tubelet gather (one program per token and BLOCK_F pixels of its row) is a copy like the row gathers, with one
# fixed configuration, not autotuned: a pure copy has no reduction order to keep, but at batch 32 the roofline model
# predicts it bandwidth-bound with 3-4 waves (ViT-B: 160 tokens x 32 x 3 programs), so a timed sweep could only add
# its first-call compiles and syncs.
TUBELET_TILE = ({"BLOCK_F": 512}, 2, 1,
                "512 pixels on 2 warps: 8 per thread, one 128-bit load and store per thread in bf16/fp16 (two in fp32) "
                "where the row allows it (patch 16); 512 divides the patch-16 rows (3 x 2 x 16 x 16 = 1536: no idle "
                "lane) and leaves 23 % of the lanes idle on ViT-g's 1176 (3 programs); 28-32 registers, so 32 CTAs "
                "(64 warps, full occupancy) per SM with 32 KB (bf16) to 64 KB (fp32) of loads in flight, 3-6x what "
                "Little's law asks.")


def tube_tile(hw: int) -> dict:
    """Launch sizes of the tube-mask kernel for ``hw`` keys per frame. One program ranks a whole frame with a
    ``BLOCK x BLOCK_J`` comparison tile: 64 values per thread (~170 registers) up to 8 warps, and more warps, not a
    larger tile, for a larger frame. At 16 warps (H'W' = 1024, ViT-g at 448 px) the register file leaves 128 per
    thread, so 32 values; the 4-warp tile of 256 values per thread spilled there (255 registers, 316 B). Past
    H'W' = 16384 the tile is one key wide (``BLOCK_J = 1``): correct, but the frame no longer fits the registers."""
    block = next_pow2(hw)
    if block > MAX_BLOCK:
        raise ValueError(f"tube_ids: H'W' = {hw} keys per frame exceeds the Triton kernel's {MAX_BLOCK} (one program "
                         f"ranks a whole frame); use the 'torch' backend")
    warps = min(16, max(4, block // 64))
    values = 64 if warps <= 8 else 32
    return dict(BLOCK=block, BLOCK_J=max(1, min(32, values * 32 * warps // block)), num_warps=warps)
