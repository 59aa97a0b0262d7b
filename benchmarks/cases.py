"""The token-op cases of the kernel benchmarks, free of pytest: ``pytest benchmarks/`` and
``python -m benchmarks.gpu.check`` build the same inputs (seeded, outside any timed region) and count the same bytes.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

import vmae2_kernels as K
from vmae2_kernels import ops
from vmae2_kernels import reference as R
from benchmarks.gpu.roofline import Shape

MEAN, STD = list(K.IMAGENET_DEFAULT_MEAN), list(K.IMAGENET_DEFAULT_STD)


@dataclass(frozen=True)
class Setting:
    """Where and at what size the cases run: activations (x, x_vis, pred) in ``dtype``; tables, video fp32."""
    device: torch.device
    batch: int
    dtype: torch.dtype


def esize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def mask_ids(shape: Shape, setting: Setting, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder-visible ids ``[B, Nv]`` (tube) and decoder-visible ids ``[B, Nd]`` (running cell), on the device."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(setting.batch, shape.hw, generator=g)
    phase = torch.randint(0, 4, (setting.batch,), generator=g)
    vis = R.tube_ids(keys, shape.grid[0], shape.masked_per_frame)
    dec = R.running_cell_ids(phase, shape.grid, shape.masked_per_cell)
    return vis.to(setting.device), dec.to(setting.device)


def randn(setting: Setting, *size, dtype=torch.float32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*size, generator=g).to(device=setting.device, dtype=dtype)


@functools.lru_cache(maxsize=None)
def make_video(shape: Shape, setting: Setting) -> torch.Tensor:
    """A normalised-looking clip batch ``[B, 3, T, H, W]`` fp32 (cached: it is the largest input)."""
    return randn(setting, setting.batch, 3, shape.frames, shape.image, shape.image, seed=3)


@dataclass
class Case:
    """One op at one shape: how each provider calls it, and the bytes it must move."""
    public: object  # backend -> zero-argument callable (the public op, or the ops layer for the mask ops)
    reference: object  # reference fn (compiled or not) -> zero-argument callable
    nbytes: int


def build_case(op: str, shape: Shape, setting: Setting) -> Case:
    B, N, Nv, Nd = setting.batch, shape.num_tokens, shape.num_visible, shape.num_dec
    DTYPE = setting.dtype
    vis_ids, dec_ids = mask_ids(shape, setting)
    ids_b = esize(torch.int64)
    if op == "token_gather":  # encoder: visible tokens of the patch embedding, plus the position table
        C = shape.dim
        x, pos = randn(setting, B, N, C, dtype=DTYPE, seed=1), randn(setting, N, C, seed=2)
        nbytes = B * Nv * C * esize(DTYPE) + B * Nv * ids_b + B * Nv * C * esize(pos.dtype) + B * Nv * C * esize(DTYPE)
        return Case(lambda b: (lambda: K.token_gather(x, vis_ids, pos, backend=b)),
                    lambda f: (lambda: f(x, vis_ids, pos)), nbytes)
    if op == "token_scatter":  # the adjoint (backward of the gather): [B, Nv, C] -> [B, N, C], zeros elsewhere
        C = shape.dim
        src = randn(setting, B, Nv, C, dtype=DTYPE, seed=1)
        nbytes = B * Nv * C * esize(DTYPE) + B * Nv * ids_b + B * N * C * esize(DTYPE)  # the zeros are written too
        return Case(lambda b: (lambda: K.token_scatter(src, vis_ids, N, backend=b)),
                    lambda f: (lambda: f(src, vis_ids, N)), nbytes)
    if op == "tubelet_gather":  # the masked patch embedding's input: the Nv visible tubelets of a clip in DTYPE
        video, F = make_video(shape, setting).to(DTYPE), shape.pred_dim
        nbytes = 2 * B * Nv * F * esize(DTYPE) + B * Nv * ids_b  # the tubelets' pixels read, their rows written
        return Case(lambda b: (lambda: K.tubelet_gather(video, vis_ids, shape.patch, shape.tubelet, backend=b)),
                    lambda f: (lambda: f(video, vis_ids, shape.patch, shape.tubelet)), nbytes)
    if op == "decoder_input":  # [x_vis + pos[vis_ids] | mask_token + pos[dec_ids]]
        D = shape.dec_dim
        x_vis, pos = randn(setting, B, Nv, D, dtype=DTYPE, seed=1), randn(setting, N, D, seed=2)
        token = randn(setting, 1, 1, D, seed=4) * 0.02  # fp32 parameter, as in the model: the output is fp32
        out_dtype = torch.promote_types(DTYPE, token.dtype)
        L = Nv + Nd
        nbytes = (B * Nv * D * esize(DTYPE) + B * L * ids_b + B * L * D * esize(pos.dtype) + D * esize(token.dtype)
                  + B * L * D * esize(out_dtype))
        return Case(lambda b: (lambda: K.decoder_input(x_vis, vis_ids, dec_ids, token, pos, backend=b)),
                    lambda f: (lambda: f(x_vis, vis_ids, dec_ids, token, pos)), nbytes)
    if op == "running_cell_ids":  # ops layer: the phase is drawn outside the timed region
        t, h, w = shape.grid
        m = shape.masked_per_cell
        phase = torch.randint(0, 4, (B,), generator=torch.Generator().manual_seed(5)).to(setting.device)
        nbytes = B * ids_b + B * Nd * ids_b
        return Case(lambda b: (lambda: ops.running_cell_ids(phase, t, h, w, m, b)),
                    lambda f: (lambda: f(phase, shape.grid, m)), nbytes)
    if op == "tube_ids":  # ops layer: the random keys are drawn outside the timed region
        keys = torch.rand(B, shape.hw, generator=torch.Generator().manual_seed(6)).to(setting.device)
        t, m = shape.grid[0], shape.masked_per_frame
        nbytes = B * shape.hw * esize(keys.dtype) + B * Nv * ids_b
        return Case(lambda b: (lambda: ops.tube_ids(keys, t, m, b)), lambda f: (lambda: f(keys, t, m)), nbytes)
    if op == "recon_loss":  # forward only, float weights (one per decoder-visible token)
        P = shape.pred_dim
        pred, video = randn(setting, B, Nd, P, dtype=DTYPE, seed=1), make_video(shape, setting)
        weights = (torch.rand(B, Nd, generator=torch.Generator().manual_seed(7)) < shape.enc_ratio).float().to(setting.device)
        nbytes = recon_fwd_bytes(shape, B, pred.dtype, video.dtype)
        return Case(lambda b: (lambda: K.recon_loss(pred, video, dec_ids, weights=weights,
                                                    patch_size=shape.patch, tubelet_size=shape.tubelet,
                                                    target="videomae", mean=MEAN, std=STD, backend=b)),
                    lambda f: (lambda: f(pred, video, dec_ids, weights, shape.patch, shape.tubelet, 1, MEAN, STD)),
                    nbytes)
    raise ValueError(op)


def recon_fwd_bytes(shape: Shape, B: int, pred_dtype, video_dtype) -> int:
    """Reads pred, the Nd patches of the video (P values each), ids and fp32 weights; writes B*Nd fp32 partials."""
    Nd, P = shape.num_dec, shape.pred_dim
    return (B * Nd * P * esize(pred_dtype) + B * Nd * P * esize(video_dtype) + B * Nd * esize(torch.int64)
            + B * Nd * 4 + B * Nd * 4)


def recon_fwd_bwd_bytes(shape: Shape, B: int, pred_dtype, video_dtype) -> int:
    """Forward, then a backward that reads the same inputs again and writes the gradient w.r.t. pred."""
    Nd, P = shape.num_dec, shape.pred_dim
    bwd = (B * Nd * P * esize(pred_dtype) + B * Nd * P * esize(video_dtype) + B * Nd * esize(torch.int64)
           + B * Nd * 4 + B * Nd * P * esize(pred_dtype))
    return recon_fwd_bytes(shape, B, pred_dtype, video_dtype) + bwd
