"""vmae2_kernels: fused token-level ops of the VideoMAE V2 dual-masking data path.

Usable from any MAE codebase; importable with no GPU, no Triton and no compiled extension. Each op runs
on the backend chosen by :mod:`vmae2_kernels.dispatch` (Triton on CUDA, the native CPU extension or the
plain-PyTorch reference on CPU); ``backend=`` forces one, ``VMAE2_BACKEND`` forces one on the devices it serves.
``python -m vmae2_kernels.info`` shows what runs where.

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

from typing import Sequence

import torch
import torch.nn.functional as F

from vmae2_kernels import checks, ops, reference
from vmae2_kernels.masks import (KEEP_ALIASES, KEEP_RULES, complement_ids, ids_to_mask, keep_count, mask_to_ids,
                                 random_ids, restore_ids, running_cell_ids, tube_ids)
from vmae2_kernels.reference import TARGETS

__version__ = "0.1.0"
__all__ = ["token_gather", "token_scatter", "tubelet_gather", "patch_embed", "decoder_input", "running_cell_ids",
           "tube_ids", "random_ids", "complement_ids", "restore_ids", "ids_to_mask", "keep_count", "KEEP_RULES",
           "KEEP_ALIASES", "recon_loss", "mask_to_ids",
           "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD", "__version__"]

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


def _with_prefix(ids: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """``[0..P-1 | ids + P]``: ids over a sequence whose first ``P`` rows are prefix (cls/register) tokens."""
    prefix = torch.arange(num_prefix, device=ids.device).expand(ids.shape[0], -1)
    return torch.cat([prefix, ids + num_prefix], dim=1)


def token_gather(x: torch.Tensor, ids: torch.Tensor, pos: torch.Tensor | None = None, *, num_prefix: int = 0,
                 backend: str = "auto") -> torch.Tensor:
    """``out[b, k] = x[b, ids[b, k]] (+ pos[ids[b, k]])``: ``[B, N, C], [B, K] (, [N, C]) -> [B, K, C]``.

    With ``num_prefix = P`` the first ``P`` rows of ``x [B, P + N, C]`` (cls/register tokens) pass through first,
    plus the table's first ``P`` rows, and ``ids`` index the ``N`` other tokens: ``[B, P + K, C]``.
    ``pos``: ``[P + N, C]`` or ``[1, P + N, C]``. Replaces the official add-then-boolean-gather (and MAE's
    ``torch.gather`` with ``ids_keep`` + ``cat`` of the cls token). Differentiable w.r.t. ``x`` (and ``pos``).
    """
    if num_prefix:
        B, L, C = checks.check_rows(x, "x", "[B, P + N, C]")
        checks.check_prefix(num_prefix, L, "x")
        checks.check_ids(ids, B, "ids", x)
        if pos is not None:
            checks.pos_rows(pos, L - num_prefix, C, num_prefix)
        checks.check_ids_values(ids, L - num_prefix, "ids")
        ids = _with_prefix(ids, num_prefix)
    return ops.token_gather(x, ids, pos, backend)


def token_scatter(src: torch.Tensor, ids: torch.Tensor, num_tokens: int, *, backend: str = "auto") -> torch.Tensor:
    """Adjoint of :func:`token_gather`: ``[B, K, C] -> [B, N, C]``, zeros where no id points."""
    return ops.token_scatter(src, ids, num_tokens, backend)


def tubelet_gather(video: torch.Tensor, ids: torch.Tensor, patch_size: int, tubelet_size: int, *,
                   backend: str = "auto") -> torch.Tensor:
    """The pixels of the tubelets ``ids``: ``video [B, 3, T, H, W]``, ``ids [B, K]`` -> ``[B, K, 3*t*p*p]`` (video's
    dtype), ``t = tubelet_size``, ``p = patch_size``.

    Tokens in ``(t, h, w)`` order over the grid ``(T/t, H/p, W/p)``; a row's pixels in ``(c, p0, p1, p2)`` order, a
    Conv3d weight's ``weight.flatten(1)`` order. Pure data movement; differentiable w.r.t. ``video``.
    """
    return ops.tubelet_gather(video, ids, patch_size, tubelet_size, backend)


def patch_embed(video: torch.Tensor, ids: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                pos: torch.Tensor | None = None, *, backend: str = "auto") -> torch.Tensor:
    """The tubelet embedding of the tokens ``ids`` only (+ their position rows): ``[B, K, C]``.

    ``video [B, 3, T, H, W]``, ``ids [B, K]``, ``weight [C, 3, t, p, p]`` and ``bias [C]`` (a Conv3d's, kernel = stride
    = ``(t, p, p)``), ``pos [N, C]`` or ``[1, N, C]``:
    ``conv3d(video, weight, bias, stride=(t, p, p)).flatten(2).transpose(1, 2)`` gathered at ``ids`` (+ ``pos[ids]``),
    computed from the ``K`` tubelets alone (:func:`tubelet_gather`, then one ``F.linear``, which autocast runs in bf16
    as it would the Conv3d). The position rows are added in the result's dtype, as :func:`token_gather` adds them.
    Not a custom op: autograd and ``torch.compile`` see its parts.
    """
    if pos is not None and video.is_meta:  # a shape-only run of a meta-built model, whose tables stay on the CPU
        pos = pos.to("meta")
    patch, tubelet = checks.check_patch_embed(video, weight, bias, pos)
    x = F.linear(ops.tubelet_gather(video, ids, patch, tubelet, backend), weight.flatten(1), bias)
    return x if pos is None else x + checks.pos_rows(pos, None, weight.shape[0])[ids].to(x.dtype)


LAYOUTS = ("concat", "ordered")


def decoder_input(x_vis: torch.Tensor, vis_ids: torch.Tensor, dec_ids: torch.Tensor | None, mask_token: torch.Tensor,
                  pos: torch.Tensor, *, num_prefix: int = 0, num_tokens: int | None = None, layout: str = "concat",
                  backend: str = "auto") -> torch.Tensor:
    """The whole decoder sequence, ``[x_vis + pos[vis_ids] | mask_token + pos[dec_ids]]``, in one launch.

    ``x_vis [B, Nv, D]``, ``vis_ids [B, Nv]``, ``dec_ids [B, Nd]``, ``mask_token`` (D elements), ``pos [N, D]``
    -> ``[B, Nv + Nd, D]`` in the promoted dtype of the three inputs (fp32 for an fp32 table, as the official
    decoder). Gradients flow to ``x_vis``, ``mask_token`` (and a learnable ``pos``).

    - ``dec_ids=None``: every token not in ``vis_ids`` (:func:`complement_ids`; MAE and VideoMAE v1), ``Nd = N - Nv``.
    - ``num_tokens``: ``N`` (the token grid, ``T'H'W'``), checked against the table's rows (``P + N``); None: ``N``
      is the table's rows less ``num_prefix``, so pass it when the table may carry a cls row.
    - ``num_prefix = P``: ``x_vis [B, P + Nv, D]`` starts with cls/register rows; they come first, plus the table's
      first ``P`` rows (``pos [P + N, D]`` or ``[1, P + N, D]``); the ids index the ``N`` other tokens.
    - ``layout="concat"`` (default): ``[prefix | visible in vis_ids order | mask tokens in dec_ids order]``. Rows
      carry their position only through ``pos``, so this is right for a permutation-equivariant decoder (plain
      attention and MLP blocks, no relative-position bias or windowing), whose outputs just follow the rows; the
      official VideoMAE V2 decoder is one.
    - ``layout="ordered"``: the rows after the prefix sorted by token id ``(t, h, w)`` (a token in both ids: its
      visible row first): row ``P + r`` holds concat row ``P + order[:, r]``, ``order = argsort(cat([vis_ids,
      dec_ids], 1), stable=True)`` (mask-token rows: ``order >= Nv``). With ``dec_ids=None`` it is the full
      ``[B, P + N, D]`` grid, a mask token at every non-visible position: MAE's un-shuffled sequence, for decoders
      that reshape to ``[B, T, HW, D]``. Costs one more row copy (a :func:`token_gather` of the concat layout).
    """
    B, L, D = checks.check_rows(x_vis, "x_vis", "[B, P + Nv, D]")
    checks.check_prefix(num_prefix, L, "x_vis")
    checks.check_ids(vis_ids, B, "vis_ids", x_vis, L - num_prefix)
    N = checks.decoder_tokens(pos, D, num_prefix, num_tokens, L - num_prefix)
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is unknown; choose one of {LAYOUTS}")
    if dec_ids is None:
        dec_ids = complement_ids(vis_ids, N)
    if num_prefix:
        checks.check_ids(dec_ids, B, "dec_ids", x_vis)
        checks.check_ids_values(vis_ids, N, "vis_ids")
        checks.check_ids_values(dec_ids, N, "dec_ids")
        vis_ids, dec_ids = _with_prefix(vis_ids, num_prefix), dec_ids + num_prefix
    out = ops.decoder_input(x_vis, vis_ids, dec_ids, mask_token, pos, backend)
    if layout == "ordered":  # the prefix ids 0..P-1 are the smallest: the prefix rows stay first
        order = torch.argsort(torch.cat([vis_ids, dec_ids], 1), dim=1, stable=True)
        out = ops.token_gather(out, order, None, backend)
    return out


def recon_loss(pred: torch.Tensor, video: torch.Tensor, dec_ids: torch.Tensor | None, mask: torch.Tensor | None = None,
               *, patch_size: int, tubelet_size: int = 2, target: str | None = None,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               weights: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """Fused reconstruction loss (MSE against per-patch targets); the full target tensor is never materialised.
    Returns a scalar in fp32 (fp32, bf16 or fp16 ``pred``) or fp64 (fp64 ``pred``: the reference, targets and sums in
    fp64 for an fp64 video); backward gives the gradient w.r.t. ``pred`` in ``pred``'s dtype.

    - ``pred [B, Nd, 3*t*p*p]`` (any float dtype), one row per reconstructed token, pixels in ``(p0 p1 p2 c)`` order
      (channel fastest); ``t = tubelet_size``, ``p = patch_size``.
    - ``video [B, 3, T, H, W]``, or images ``[B, 3, H, W]`` with ``tubelet_size=1``; tokens in ``(t, h, w)`` order.
    - ``dec_ids``: which token each ``pred`` row is: ids ``[B, Nd]``; or a decoder mask ``[B, N]`` (bool or float 0/1,
      True/1 = not reconstructed), whose ``Nd`` kept tokens are taken in ascending order (``Nd`` from ``pred``: no
      host sync); or None: ``pred`` covers every token in order (MAE: ``Nd = N``).
    - ``mask [B, N]`` (bool or 0/1; True/1 = masked by the encoder = supervised), in token order; or ``weights
      [B, Nd]`` per ``pred`` row. The loss is ``sum(w * mse_row) / sum(w)``.
    - ``target`` (required): ``"videomae"`` (VideoMAE / V2 ``normalize_target``: per patch and channel,
      ``(x - mean) / (std + 1e-6)``), ``"mae"`` (MAE ``norm_pix_loss``: per patch over all its pixels and channels,
      ``(x - mean) / sqrt(var + 1e-6)``) or ``"raw"`` (the pixels); unbiased statistics.
    - ``mean``/``std``: the per-channel normalisation ``video`` carries, undone before the target is made (VideoMAE:
      :data:`IMAGENET_DEFAULT_MEAN` / :data:`IMAGENET_DEFAULT_STD`); None: ``video`` is used as it is (MAE).
    """
    if target not in TARGETS:
        raise ValueError(
            f"recon_loss needs target= one of {sorted(TARGETS)}, got {target!r}: 'videomae' (VideoMAE/V2 "
            f"normalize_target: per patch and channel, (x - mean) / (std + 1e-6)), 'mae' (MAE norm_pix_loss: per patch "
            f"over pixels and channels, (x - mean) / sqrt(var + 1e-6)) or 'raw' (the pixels); pass mean=/std= when the "
            f"video is normalised and the target is made from un-normalised pixels (VideoMAE: IMAGENET_DEFAULT_MEAN / "
            f"IMAGENET_DEFAULT_STD), leave them out to use the video as it is (MAE)")
    if (mean is None) != (std is None):
        raise ValueError("pass both mean= and std= (the normalisation the video carries), or neither")
    if video.ndim == 4:
        if tubelet_size != 1:
            raise ValueError(f"images [B, 3, H, W] have one frame: pass tubelet_size=1 (got {tubelet_size})")
        video = video.unsqueeze(2)
    B, N = checks.check_video(video, patch_size, tubelet_size, "the fused loss takes RGB")
    Nd = pred.shape[1] if pred.ndim == 3 else -1
    if dec_ids is None:
        dec_ids = torch.arange(N, device=pred.device).expand(B, N)
    elif dec_ids.ndim == 2 and dec_ids.shape[1] == N and (dec_ids.dtype == torch.bool or dec_ids.is_floating_point()):
        dec_ids = mask_to_ids(dec_ids, Nd)
    if (mask is None) == (weights is None):
        raise ValueError("pass the encoder mask ([B, N], True/1 = masked = supervised) or weights= ([B, Nd], one "
                         "per pred row), exactly one of them")
    if mask is not None:
        if tuple(mask.shape) != (B, N):
            raise ValueError(f"mask has shape {tuple(mask.shape)}; expected [B, N] = [{B}, {N}] in token order "
                             f"(True/1 = masked = supervised); per-row weights [B, Nd] go in weights=")
        weights = torch.gather(mask != 0, 1, dec_ids)
    weights = weights.to(reference.accumulator(pred.dtype))
    return ops.recon_loss(pred, video, dec_ids, weights, patch_size, tubelet_size, TARGETS[target],
                          [float(m) for m in mean] if mean is not None else [0.0] * 3,
                          [float(s) for s in std] if std is not None else [1.0] * 3, backend)
