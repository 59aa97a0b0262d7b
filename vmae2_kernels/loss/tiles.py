"""Launch configuration of the fused loss kernels (pure Python): one fixed ``(block sizes, num_warps, num_stages,
reason)`` entry, the format of :data:`vmae2_kernels.tiles.ROW_TILES`. What the roofline model says about it is in
:mod:`vmae2_kernels.tiles`."""
from __future__ import annotations

LOSS_TILES = (  # one fixed configuration: the loss kernels are not autotuned
    ({}, 4, 1,
     "the only one: one token per CTA, 2048-element tiles, 16 values/thread, 32-40 registers, 8-9 KB of shared "
     "memory for the pred gather and the reductions: 12 CTAs/SM (75 %) on both GPUs with ~9 KB of loads each in "
     "flight, 10x what Little's law asks. Fixed, not autotuned: a reduction's order follows the warp count, so a "
     "pick timed per process would make ranks and reruns differ in the last bits (and the timing run syncs, which "
     "a CUDA graph capture cannot contain)."),
)
