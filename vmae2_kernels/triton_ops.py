"""Every op's Triton launcher, by op name: the ``triton`` backend the dispatcher loads (only when Triton is
importable). The kernels and launchers live in their family's ``triton_kernels`` module
(:mod:`vmae2_kernels.gather.triton_kernels`, ``decoder``, ``masks``, ``loss``); each launcher has the signature of
its reference in :mod:`vmae2_kernels.reference`.
"""
from __future__ import annotations

from vmae2_kernels.decoder import triton_kernels as decoder_kernels
from vmae2_kernels.decoder.triton_kernels import decoder_input, mask_token_grad
from vmae2_kernels.gather import triton_kernels as gather_kernels
from vmae2_kernels.gather.triton_kernels import token_gather, token_scatter, tubelet_gather
from vmae2_kernels.loss import triton_kernels as loss_kernels
from vmae2_kernels.loss.triton_kernels import recon_loss, recon_loss_backward
from vmae2_kernels.masks import triton_kernels as masks_kernels
from vmae2_kernels.masks.triton_kernels import running_cell_ids, tube_ids

__all__ = ["decoder_input", "mask_token_grad", "token_gather", "token_scatter", "tubelet_gather", "recon_loss",
           "recon_loss_backward", "running_cell_ids", "tube_ids"]

MODULES = (gather_kernels, decoder_kernels, masks_kernels, loss_kernels)  # every family's kernels: the compile report's
