"""Every op's plain-PyTorch reference, by op name: the ``torch`` backend of :mod:`vmae2_kernels.ops` and the
specification each family's kernels are tested against. The references live in their family's ``reference`` module
(:mod:`vmae2_kernels.gather.reference`, ``decoder``, ``masks``, ``loss``); this module names them in one place.

Conventions: tokens ``[B, N, C]`` in ``(t, h, w)`` order; ids ``[B, K]`` int64, unique within a row and in
``[0, N)``, in any order (row ``k`` of a result follows ``ids[:, k]``), the same ``K`` for every sample; a position
table ``pos [N, C]`` is shared by the batch (the ops layer turns ``[1, N, C]`` into it).

Dtypes: data movement keeps its input's dtype; sums (loss, targets, mask-token gradient) accumulate in
``promote_types(dtype, float32)``: fp32 for fp32 / bf16 / fp16 inputs, fp64 throughout for fp64 inputs.
"""
from __future__ import annotations

from vmae2_kernels.checks import accumulator
from vmae2_kernels.decoder.reference import decoder_input, mask_token_grad
from vmae2_kernels.gather.reference import token_gather, token_scatter, tubelet_gather, tubelet_scatter
from vmae2_kernels.loss.reference import (EPS, TARGETS, normalize_patches, normalize_patches_whole, patchify,
                                          recon_loss, recon_loss_backward, recon_target)
from vmae2_kernels.masks.reference import running_cell_ids, tube_ids

__all__ = ["accumulator", "decoder_input", "mask_token_grad", "token_gather", "token_scatter", "tubelet_gather",
           "tubelet_scatter", "EPS", "TARGETS", "normalize_patches", "normalize_patches_whole", "patchify",
           "recon_loss", "recon_loss_backward", "recon_target", "running_cell_ids", "tube_ids"]
