"""vmae2_kernels: fused token-level ops of the VideoMAE V2 dual-masking data path.

Usable from any MAE codebase; importable with no GPU, no Triton and no compiled extension. Each op runs
on the backend chosen by :mod:`vmae2_kernels.dispatch` (Triton on CUDA, the native CPU extension or the
plain-PyTorch reference on CPU); ``backend=`` forces one, ``VMAE2_BACKEND`` forces one on the devices it serves.
``python -m vmae2_kernels.info`` shows what runs where.

Layout: one folder per op family, each with its plain-torch ``reference``, its input ``checks``, its launch
configuration (``tiles``), its Triton kernels (``triton_kernels``) and its public functions (``api``):
:mod:`vmae2_kernels.gather` (token and tubelet gathers), :mod:`vmae2_kernels.decoder` (the decoder input),
:mod:`vmae2_kernels.masks` (mask ids), :mod:`vmae2_kernels.loss` (the fused loss). :mod:`vmae2_kernels.ops` registers
every op and validates its inputs before dispatch.

Conventions: tokens ``[B, N, C]`` in ``(t, h, w)`` order, optionally after ``num_prefix`` cls/register rows; ids
``[B, K]`` int64 of (non-prefix) tokens, unique within a row and in ``[0, N)``, in any order (an op's row ``k``
follows ``ids[:, k]``; the id builders return them ascending, the order of a boolean-mask gather), the same ``K``
for every sample; masks are True (or nonzero) = masked; a position table is ``[N(+P), C]`` or ``[1, N(+P), C]``.

Dtypes: fp32, bf16 and fp16 run the fused kernels (sums in fp32); fp64 runs the reference, in fp64 throughout
(targets, sums and gradients), so a double-precision parity test is exact to rounding. Gathers keep their input's
dtype; ``decoder_input`` returns the promoted dtype of its inputs; ``recon_loss`` an fp32 scalar, fp64 for fp64
``pred``.
"""
from __future__ import annotations

from vmae2_kernels.decoder.api import LAYOUTS, decoder_input
from vmae2_kernels.gather.api import patch_embed, token_gather, token_scatter, tubelet_gather
from vmae2_kernels.loss.api import recon_loss
from vmae2_kernels.masks.api import (KEEP_ALIASES, KEEP_RULES, complement_ids, ids_to_mask, keep_count, mask_to_ids,
                                     random_ids, restore_ids, running_cell_ids, tube_ids)

__version__ = "0.1.0"
__all__ = ["token_gather", "token_scatter", "tubelet_gather", "patch_embed", "decoder_input", "running_cell_ids",
           "tube_ids", "random_ids", "complement_ids", "restore_ids", "ids_to_mask", "keep_count", "KEEP_RULES",
           "KEEP_ALIASES", "recon_loss", "mask_to_ids",
           "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD", "__version__"]

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
