"""The ``vmae2::`` operators: ``torch.library.custom_op`` + ``register_fake`` + ``register_autograd``.

Every op takes a trailing ``backend`` string (``auto`` / ``triton`` / ``cuda`` / ``cpp`` / ``torch``) resolved by
:mod:`vmae2_kernels.dispatch` when the op runs. The ops are opaque to ``torch.compile``: a compiled step that
uses them has no graph break. (``triton_op`` is not used: it fails without a GPU driver.) Each op body validates
its inputs with its family's ``checks`` module (:mod:`vmae2_kernels.gather.checks`, ``decoder``, ``masks``,
``loss``) before dispatch, so every backend refuses the same input the same way. The backends' op tables:
:mod:`vmae2_kernels.reference` (``torch``), :mod:`vmae2_kernels.triton_ops` (``triton``),
:mod:`vmae2_kernels.native` (``cpp`` / ``cuda``).
Every backward is itself differentiable (``create_graph=True``, double backward): the backward ops carry their own
autograd (``mask_token_grad``, ``recon_loss_backward`` through the reference) or are plain torch.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from vmae2_kernels import checks, dispatch, measure, reference
from vmae2_kernels.decoder import checks as decoder_checks
from vmae2_kernels.gather import checks as gather_checks
from vmae2_kernels.gather.reference import tubelet_scatter
from vmae2_kernels.loss import checks as loss_checks
from vmae2_kernels.loss import reference as loss_reference
from vmae2_kernels.masks import checks as masks_checks


def _impl(op: str, device: torch.device, backend: str, dtype: torch.dtype | None = None):
    return _kernel(op, device.type, dispatch.choose(op, device.type, backend, dtype))


def _kernel(op: str, device_type: str, name: str):
    if name == "torch":
        return getattr(reference, op)
    if name == "triton":
        return getattr(dispatch.triton_status()[0], op)
    return dispatch.native_status()[0].KERNELS[(op, "cuda" if device_type == "cuda" else "cpu")]


def _run(op: str, device: torch.device, backend: str, dtype: torch.dtype | None, *args):
    """``op(*args)`` on the backend ``backend`` names; ``auto`` (and no ``VMAE2_BACKEND`` serving ``device``): the
    fastest usable backend at these shapes, timed once on these arguments (:mod:`vmae2_kernels.measure`), else the
    fixed order."""
    if dispatch.requested(backend, device.type) == "auto":
        names = dispatch.usable(op, device.type, dtype)
        key = (device.type, *(f"{tuple(a.shape)} {a.dtype}".replace("torch.", "") if isinstance(a, Tensor) else
                              repr(a) for a in args))
        chosen = measure.fastest(f"kernel {op}", device.type, key, names,
                                 lambda: {n: functools.partial(_kernel(op, device.type, n), *args) for n in names})
        if chosen is not None:
            return _kernel(op, device.type, chosen)(*args)
    return _impl(op, device, backend, dtype)(*args)


# -- token_gather / token_scatter -----------------------------------------------------------------------

@torch.library.custom_op("vmae2::token_gather", mutates_args=())
def token_gather(x: Tensor, ids: Tensor, pos: Optional[Tensor], backend: str) -> Tensor:
    gather_checks.check_gather(x, ids, pos)
    pos = None if pos is None else checks.pos_rows(pos, x.shape[1], x.shape[2])  # [N, C] or [1, N, C] -> [N, C]
    return _run("token_gather", x.device, backend, x.dtype, x, ids, pos)


@token_gather.register_fake
def _(x, ids, pos, backend):
    return x.new_empty(x.shape[0], ids.shape[1], x.shape[2])


@torch.library.custom_op("vmae2::token_scatter", mutates_args=())
def token_scatter(src: Tensor, ids: Tensor, num_tokens: int, backend: str) -> Tensor:
    gather_checks.check_scatter(src, ids, num_tokens)
    return _run("token_scatter", src.device, backend, src.dtype, src, ids, num_tokens)


@token_scatter.register_fake
def _(src, ids, num_tokens, backend):
    return src.new_empty(src.shape[0], num_tokens, src.shape[2])


def _gather_setup(ctx, inputs, output):
    x, ids, pos, backend = inputs
    ctx.save_for_backward(ids)
    ctx.num_tokens, ctx.backend = x.shape[1], backend
    ctx.pos_dtype, ctx.pos_shape = (pos.dtype, pos.shape) if pos is not None else (None, None)


def _gather_backward(ctx, grad):
    (ids,) = ctx.saved_tensors
    scattered = token_scatter(grad, ids, ctx.num_tokens, ctx.backend)
    grad_x = scattered if ctx.needs_input_grad[0] else None
    grad_pos = None
    if ctx.needs_input_grad[2]:  # summed over B in fp32 (fp64 for fp64), in the table's own shape and dtype
        grad_pos = scattered.to(checks.accumulator(scattered.dtype)).sum(0).to(ctx.pos_dtype).reshape(ctx.pos_shape)
    return grad_x, None, grad_pos, None


def _scatter_setup(ctx, inputs, output):
    _, ids, _, backend = inputs
    ctx.save_for_backward(ids)
    ctx.backend = backend


def _scatter_backward(ctx, grad):
    (ids,) = ctx.saved_tensors
    return token_gather(grad, ids, None, ctx.backend), None, None, None


token_gather.register_autograd(_gather_backward, setup_context=_gather_setup)
token_scatter.register_autograd(_scatter_backward, setup_context=_scatter_setup)


# -- tubelet_gather (the masked patch embedding's input) -------------------------------------------------------

@torch.library.custom_op("vmae2::tubelet_gather", mutates_args=())
def tubelet_gather(video: Tensor, ids: Tensor, patch_size: int, tubelet_size: int, backend: str) -> Tensor:
    gather_checks.check_tubelet_gather(video, ids, patch_size, tubelet_size)
    return _run("tubelet_gather", video.device, backend, video.dtype, video, ids, patch_size, tubelet_size)


@tubelet_gather.register_fake
def _(video, ids, patch_size, tubelet_size, backend):
    return video.new_empty(video.shape[0], ids.shape[1], video.shape[1] * tubelet_size * patch_size * patch_size)


def _tubelet_setup(ctx, inputs, output):
    video, ids, patch_size, tubelet_size, _ = inputs
    ctx.save_for_backward(ids)
    ctx.video_shape, ctx.geometry = tuple(video.shape), (patch_size, tubelet_size)


def _tubelet_backward(ctx, grad):
    """The adjoint, :func:`vmae2_kernels.gather.reference.tubelet_scatter`, on every backend: plain torch, sync-free
    (one zero fill of the video's size and an indexed write of the ``K`` rows), computed only when the video needs a
    gradient."""
    (ids,) = ctx.saved_tensors
    grad_video = None
    if ctx.needs_input_grad[0]:
        grad_video = tubelet_scatter(grad, ids, ctx.video_shape, *ctx.geometry)
    return grad_video, None, None, None, None


tubelet_gather.register_autograd(_tubelet_backward, setup_context=_tubelet_setup)


# -- decoder_input ------------------------------------------------------------------------------------------

@torch.library.custom_op("vmae2::decoder_input", mutates_args=())
def decoder_input(x_vis: Tensor, vis_ids: Tensor, dec_ids: Tensor, mask_token: Tensor, pos: Tensor,
                  backend: str) -> Tensor:
    decoder_checks.check_decoder_input(x_vis, vis_ids, dec_ids, mask_token, pos)
    dtype = torch.promote_types(torch.promote_types(x_vis.dtype, mask_token.dtype), pos.dtype)
    pos = checks.pos_rows(pos, None, x_vis.shape[2])  # [N, D] or [1, N, D] -> [N, D]
    return _run("decoder_input", x_vis.device, backend, dtype, x_vis, vis_ids, dec_ids, mask_token, pos)


@decoder_input.register_fake
def _(x_vis, vis_ids, dec_ids, mask_token, pos, backend):
    dtype = torch.promote_types(torch.promote_types(x_vis.dtype, mask_token.dtype), pos.dtype)
    return x_vis.new_empty(x_vis.shape[0], x_vis.shape[1] + dec_ids.shape[1], x_vis.shape[2], dtype=dtype)


@torch.library.custom_op("vmae2::mask_token_grad", mutates_args=())
def mask_token_grad(grad: Tensor, num_visible: int, backend: str) -> Tensor:
    decoder_checks.check_mask_token_grad(grad, num_visible)
    return _run("mask_token_grad", grad.device, backend, grad.dtype, grad, num_visible)


@mask_token_grad.register_fake
def _(grad, num_visible, backend):
    return grad.new_empty(grad.shape[2], dtype=checks.accumulator(grad.dtype))


def _decoder_setup(ctx, inputs, output):
    x_vis, vis_ids, dec_ids, mask_token, pos, backend = inputs
    ctx.save_for_backward(vis_ids, dec_ids)
    ctx.x_dtype, ctx.token_shape, ctx.token_dtype = x_vis.dtype, mask_token.shape, mask_token.dtype
    ctx.pos_shape, ctx.pos_dtype, ctx.backend = pos.shape, pos.dtype, backend


def _decoder_backward(ctx, grad):
    vis_ids, dec_ids = ctx.saved_tensors
    nv = vis_ids.shape[1]
    grad_x = grad[:, :nv].to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
    grad_token = None
    if ctx.needs_input_grad[3]:
        grad_token = mask_token_grad(grad, nv, ctx.backend).to(ctx.token_dtype).reshape(ctx.token_shape)
    grad_pos = None
    if ctx.needs_input_grad[4]:  # learnable decoder position table (the official one is fixed), in its own shape
        rows, acc = ctx.pos_shape[-2], checks.accumulator(grad.dtype)
        grad_pos = (token_scatter(grad[:, :nv].contiguous(), vis_ids, rows, ctx.backend).to(acc)
                    + token_scatter(grad[:, nv:].contiguous(), dec_ids, rows, ctx.backend).to(acc))
        grad_pos = grad_pos.sum(0).to(ctx.pos_dtype).reshape(ctx.pos_shape)
    return grad_x, None, None, grad_token, grad_pos, None


def _token_grad_setup(ctx, inputs, output):
    grad, num_visible, _ = inputs
    ctx.grad_shape, ctx.grad_dtype, ctx.num_visible = grad.shape, grad.dtype, num_visible


def _token_grad_backward(ctx, g):
    """The adjoint of the masked rows' sum (double backward through :func:`decoder_input`): ``g`` on every row
    past ``num_visible``, zero on the visible rows; plain torch on every backend."""
    b, n, d = ctx.grad_shape
    nv = ctx.num_visible
    grad = torch.cat([g.new_zeros(b, nv, d), g.reshape(1, 1, d).expand(b, n - nv, d)], dim=1).to(ctx.grad_dtype)
    return grad, None, None


decoder_input.register_autograd(_decoder_backward, setup_context=_decoder_setup)
mask_token_grad.register_autograd(_token_grad_backward, setup_context=_token_grad_setup)


# -- mask ids (no autograd) ---------------------------------------------------------------------------------

@torch.library.custom_op("vmae2::running_cell_ids", mutates_args=())
def running_cell_ids(phase: Tensor, T: int, H: int, W: int, masked_per_cell: int, backend: str) -> Tensor:
    phase = masks_checks.check_running_cell(phase, T, H, W, masked_per_cell)
    return _run("running_cell_ids", phase.device, backend, None, phase, (T, H, W), masked_per_cell)


@running_cell_ids.register_fake
def _(phase, T, H, W, masked_per_cell, backend):
    return phase.new_empty(phase.shape[0], T * H * W * (4 - masked_per_cell) // 4, dtype=torch.int64)


@torch.library.custom_op("vmae2::tube_ids", mutates_args=())
def tube_ids(keys: Tensor, num_frames: int, num_masked: int, backend: str) -> Tensor:
    masks_checks.check_tube(keys, num_frames, num_masked)
    return _run("tube_ids", keys.device, backend, None, keys, num_frames, num_masked)


@tube_ids.register_fake
def _(keys, num_frames, num_masked, backend):
    return keys.new_empty(keys.shape[0], num_frames * (keys.shape[1] - num_masked), dtype=torch.int64)


# -- fused reconstruction loss ------------------------------------------------------------------------------

@torch.library.custom_op("vmae2::recon_loss", mutates_args=())
def recon_loss(pred: Tensor, video: Tensor, dec_ids: Tensor, weights: Tensor, patch_size: int, tubelet_size: int,
               target: int, mean: list[float], std: list[float], backend: str) -> Tensor:
    loss_checks.check_loss(pred, video, dec_ids, weights, patch_size, tubelet_size, target, mean, std)
    return _run("recon_loss", pred.device, backend, pred.dtype, pred, video, dec_ids, weights, patch_size,
                tubelet_size, target, mean, std)


@recon_loss.register_fake
def _(pred, video, dec_ids, weights, patch_size, tubelet_size, target, mean, std, backend):
    return pred.new_empty((), dtype=torch.promote_types(pred.dtype, torch.float32))


@torch.library.custom_op("vmae2::recon_loss_backward", mutates_args=())
def recon_loss_backward(grad_out: Tensor, pred: Tensor, video: Tensor, dec_ids: Tensor, weights: Tensor,
                        patch_size: int, tubelet_size: int, target: int, mean: list[float], std: list[float],
                        backend: str) -> Tensor:
    loss_checks.check_loss(pred, video, dec_ids, weights, patch_size, tubelet_size, target, mean, std)
    return _run("recon_loss_backward", pred.device, backend, pred.dtype, grad_out, pred, video, dec_ids, weights,
                patch_size, tubelet_size, target, mean, std).contiguous()


@recon_loss_backward.register_fake
def _(grad_out, pred, video, dec_ids, weights, patch_size, tubelet_size, target, mean, std, backend):
    return pred.new_empty(pred.shape)  # contiguous, as every backend returns it (not pred's strides)


def _loss_setup(ctx, inputs, output):
    pred, video, dec_ids, weights, *config = inputs
    ctx.save_for_backward(pred, video, dec_ids, weights)
    ctx.config = config  # patch_size, tubelet_size, target, mean, std, backend


def _loss_backward(ctx, grad):
    pred, video, dec_ids, weights = ctx.saved_tensors
    grad_pred = recon_loss_backward(grad, pred, video, dec_ids, weights, *ctx.config)
    return (grad_pred,) + (None,) * 9


def _loss_grad_setup(ctx, inputs, output):
    grad_out, pred, video, dec_ids, weights, *config = inputs
    ctx.save_for_backward(grad_out, pred, video, dec_ids, weights)
    ctx.config = config[:-1]  # patch_size, tubelet_size, target, mean, std


def _loss_grad_backward(ctx, v):
    """Double backward of :func:`recon_loss` (``create_graph=True``): the vector-Jacobian product of
    :func:`vmae2_kernels.loss.reference.recon_loss_backward` w.r.t. ``grad_out`` and ``pred``, by autograd through
    the reference on every backend (the video, ids and weights get no gradient, as in the first backward)."""
    grad_out, pred, video, dec_ids, weights = ctx.saved_tensors
    wanted = ctx.needs_input_grad[:2]
    create_graph = torch.is_grad_enabled()  # a third order when the double backward itself has create_graph=True
    with torch.enable_grad():
        out = loss_reference.recon_loss_backward(grad_out, pred, video, dec_ids, weights, *ctx.config)
        inputs = [t for t, w in zip((grad_out, pred), wanted) if w]
        grads = iter(torch.autograd.grad(out, inputs, v, create_graph=create_graph))
    grad_g, grad_p = (next(grads) if w else None for w in wanted)
    return (grad_g, grad_p) + (None,) * 9


recon_loss.register_autograd(_loss_backward, setup_context=_loss_setup)
recon_loss_backward.register_autograd(_loss_grad_backward, setup_context=_loss_grad_setup)

DTYPE_FREE = ("running_cell_ids", "tube_ids")  # ops whose backend does not depend on a dtype (ids and keys in)

OPS = {"token_gather": token_gather, "token_scatter": token_scatter, "tubelet_gather": tubelet_gather,
       "decoder_input": decoder_input, "mask_token_grad": mask_token_grad, "running_cell_ids": running_cell_ids,
       "tube_ids": tube_ids, "recon_loss": recon_loss, "recon_loss_backward": recon_loss_backward}
