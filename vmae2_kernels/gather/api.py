"""The gathers as a codebase calls them: ``num_prefix`` cls/register rows, ``[1, N, C]`` tables, the masked patch
embedding (:func:`patch_embed`, a composite of the ``tubelet_gather`` op and ``F.linear``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vmae2_kernels import checks, ops
from vmae2_kernels.gather.checks import check_patch_embed


def with_prefix(ids: torch.Tensor, num_prefix: int) -> torch.Tensor:
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
        ids = with_prefix(ids, num_prefix)
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
    patch, tubelet = check_patch_embed(video, weight, bias, pos)
    x = F.linear(ops.tubelet_gather(video, ids, patch, tubelet, backend), weight.flatten(1), bias)
    return x if pos is None else x + checks.pos_rows(pos, None, weight.shape[0])[ids].to(x.dtype)
