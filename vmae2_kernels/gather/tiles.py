"""Launch configuration of the tubelet gather (pure Python); the row copies' tiles are
:data:`vmae2_kernels.tiles.ROW_TILES`, shared with the decoder input.

The tubelet gather (one program per token and BLOCK_F pixels of its row) is a copy like the row gathers, with one
fixed configuration, not autotuned: a pure copy has no reduction order to keep, but at batch 32 the roofline model
predicts it bandwidth-bound with 3-4 waves (ViT-B: 160 tokens x 32 x 3 programs), so a timed sweep could only add
its first-call compiles and syncs.
"""
from __future__ import annotations

TUBELET_TILE = ({"BLOCK_F": 512}, 2, 1,
                "512 pixels on 2 warps: 8 per thread, one 128-bit load and store per thread in bf16/fp16 (two in fp32) "
                "where the row allows it (patch 16); 512 divides the patch-16 rows (3 x 2 x 16 x 16 = 1536: no idle "
                "lane) and leaves 23 % of the lanes idle on ViT-g's 1176 (3 programs); 28-32 registers, so 32 CTAs "
                "(64 warps, full occupancy) per SM with 32 KB (bf16) to 64 KB (fp32) of loads in flight, 3-6x what "
                "Little's law asks.")
