"""Launch sizes of the tube-mask kernel (pure Python); the running-cell kernel takes one block of
``next_pow2(H'W')``."""
from __future__ import annotations

from vmae2_kernels.tiles import MAX_BLOCK, next_pow2


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
