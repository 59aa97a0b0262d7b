"""The public mask builders: device-side construction of sorted mask ids (no boolean mask materialised by the
kernels, no host sync).

``grid = (T', H', W')`` tokens in ``(t, h, w)`` order. Returned ids are the *kept* tokens, ``[B, K]`` int64,
ascending. Randomness comes from a ``torch.Generator`` (drawn on its device when given).

Keep counts at a mask ratio ``r`` over ``n`` tokens (:data:`KEEP_RULES`, :func:`keep_count`), named by what rounds
down: ``"floor_kept"`` keeps ``int(n * (1 - r))`` (MAE's ``random_masking``; alias ``"mae"``), ``"floor_masked"``
masks ``int(r * n)`` and keeps the rest, ``n - int(r * n)`` (VideoMAE's generators; alias ``"videomae"``). They
differ when ``r * n`` is not an integer in floating point (N=392, r=0.9: 39 vs 40). Which end of the noise sort is
kept is :func:`random_ids`'s ``keep_noise`` (``"smallest"``, MAE's, or ``"largest"``).
"""
from __future__ import annotations

from typing import Sequence

import torch

from vmae2_kernels import checks, ops
from vmae2_kernels.masks.checks import check_even, check_grid, check_ratio

RUNNING_CELL_RATIOS = (0.25, 0.5, 0.75)
KEEP_RULES = {"floor_kept": "int(n * (1 - ratio))", "floor_masked": "n - int(ratio * n)"}
KEEP_ALIASES = {"mae": "floor_kept", "videomae": "floor_masked"}  # named by the code whose keep count each is
KEEP_NOISE = ("smallest", "largest")


def keep_count(n: int, ratio: float, keep: str) -> int:
    """Tokens kept out of ``n`` at mask ratio ``ratio`` under the rule ``keep`` (:data:`KEEP_RULES`, or an alias in
    :data:`KEEP_ALIASES`)."""
    check_ratio(ratio)
    rule = KEEP_ALIASES.get(keep, keep)
    if rule == "floor_kept":
        return int(n * (1 - ratio))
    if rule == "floor_masked":
        return n - int(ratio * n)
    raise ValueError(f"keep={keep!r} is unknown; choose one of {tuple(KEEP_RULES)} ({KEEP_RULES}) or an alias "
                     f"({KEEP_ALIASES})")


def target_device(device, generator: torch.Generator | None) -> torch.device:
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def running_cell_masked_per_cell(ratio: float) -> int:
    """``m = int(4 * ratio)`` masked slots per 2x2 cell; only 0.25, 0.5 and 0.75 are allowed."""
    if ratio not in RUNNING_CELL_RATIOS:
        raise ValueError(
            f"running-cell ratio {ratio} is not supported; the 2x2 cell allows {RUNNING_CELL_RATIOS} "
            f"(the official generator floors other values to these and asserts ratio >= 0.25)")
    return int(4 * ratio)


def running_cell_phase(batch_size: int, phase=None, *, generator=None, device=None) -> torch.Tensor:
    """``[B]`` int64 phases: drawn uniformly from 0..3 when ``phase`` is None, else an int or ``[B]`` tensor."""
    dev = target_device(device, generator)
    if phase is None:
        return torch.randint(0, 4, (batch_size,), generator=generator, device=dev)
    if isinstance(phase, int):
        if not 0 <= phase < 4:
            raise ValueError(f"phase {phase} is out of range; use 0, 1, 2 or 3")
        return torch.full((batch_size,), phase, dtype=torch.long, device=dev)
    phase = torch.as_tensor(phase, device=dev).long()
    if phase.shape != (batch_size,):
        raise ValueError(f"phase has shape {tuple(phase.shape)}; expected ({batch_size},)")
    return phase


def running_cell_ids(batch_size: int, grid: Sequence[int], ratio: float = 0.5, phase=None, *, generator=None,
                     device=None, backend: str = "auto") -> torch.Tensor:
    """Decoder-visible ids ``[B, T'H'W'(4-m)/4]`` of the official running-cell mask, ascending.

    ``phase`` (int or ``[B]``, 0..3) is the official generator row ``all_mask_maps[phase]``; None draws it.
    """
    t, h, w = check_even(grid)
    m = running_cell_masked_per_cell(ratio)
    phase = running_cell_phase(batch_size, phase, generator=generator, device=device)
    return ops.running_cell_ids(phase, t, h, w, m, backend)


def tube_ids(batch_size: int, grid: Sequence[int], ratio: float, generator=None, *, device=None,
             keep: str = "floor_masked", backend: str = "auto") -> torch.Tensor:
    """Encoder-visible ids ``[B, T' * k]`` of tube masks, ``k = keep_count(H'W', ratio, keep)`` per slice, ascending.

    Each sample masks a uniformly random set of ``H'W' - k`` spatial positions in every temporal slice. With
    ``grid = (1, 1, L)`` this is random masking of ``L`` tokens; ``keep="floor_kept"`` then keeps MAE's count.
    """
    t, h, w = check_grid(grid)
    kept = keep_count(h * w, ratio, keep)
    keys = torch.rand((batch_size, h * w), generator=generator, device=target_device(device, generator))
    return ops.tube_ids(keys, t, h * w - kept, backend)


def random_ids(batch_size: int, num_tokens: int, ratio: float, noise: torch.Tensor | None = None, *,
               keep: str = "floor_kept", keep_noise: str = "smallest", generator=None,
               device=None) -> torch.Tensor:
    """Kept ids ``[B, K]`` of uniformly random masks over ``N = num_tokens`` tokens, ascending; sync-free.

    ``K = keep_count(N, ratio, keep)``: ``"floor_kept"`` (MAE) rounds the kept count down, ``"floor_masked"``
    (VideoMAE) the masked count. Per sample the ``K`` tokens of ``keep_noise="smallest"`` ``noise`` (``[B, N]``
    float, uniform from ``generator`` when None) are kept, as MAE's ``random_masking``: the same *set* as MAE's
    ``ids_keep = argsort(noise)[:, :K]``, sorted (``ids_keep.sort(1).values``); ``"largest"`` keeps the ``K``
    largest (ties: the lower index first, either way). :func:`restore_ids` gives the matching ``ids_restore``,
    :func:`ids_to_mask` the ``[B, N]`` mask.
    """
    if keep_noise not in KEEP_NOISE:
        raise ValueError(f"keep_noise={keep_noise!r} is unknown; choose one of {KEEP_NOISE} (which end of the noise "
                         f"sort is kept; MAE keeps the smallest)")
    K = keep_count(num_tokens, ratio, keep)
    if noise is None:
        noise = torch.rand((batch_size, num_tokens), generator=generator, device=target_device(device, generator))
    elif noise.shape != (batch_size, num_tokens) or not noise.dtype.is_floating_point:
        raise ValueError(f"noise must be a [B, N] = [{batch_size}, {num_tokens}] float tensor, got "
                         f"{tuple(noise.shape)} {noise.dtype}")
    order = torch.argsort(noise, dim=1, descending=keep_noise == "largest", stable=True)
    return order[:, :K].sort(dim=1).values


def ids_to_mask(ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``[B, N]`` bool mask of kept ids ``[B, K]`` (any order): False at ``ids``, True (masked) elsewhere."""
    mask = torch.ones(ids.shape[0], num_tokens, dtype=torch.bool, device=ids.device)
    return mask.scatter_(1, ids, False)


def complement_ids(ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The ``N - K`` ids not in ``ids`` (any order), ascending: ``[B, N - K]`` (the masked ids of kept ids).
    Sync-free."""
    order = torch.argsort(ids_to_mask(ids, num_tokens).to(torch.int8), dim=1, stable=True)
    return order[:, ids.shape[1]:]


def restore_ids(ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """MAE's ``ids_restore`` ``[B, N]`` for kept ids ``[B, K]`` (any order, e.g. MAE's unsorted ``ids_keep``).

    ``torch.gather(torch.cat([x_kept, mask_tokens], 1), 1, ids_restore[..., None].expand(-1, -1, C))`` puts row
    ``k`` of ``x_kept`` at token ``ids[:, k]`` and a mask token at every other token: the token-ordered sequence
    (:func:`vmae2_kernels.decoder_input` with ``dec_ids=None, layout="ordered"`` builds it in the kernels). It is
    the inverse of the permutation ``cat([ids, complement_ids(ids, N)])``; it equals MAE's own ``ids_restore`` at the
    kept tokens (MAE orders the masked ones by noise, which no result depends on).
    """
    shuffle = torch.cat([ids, complement_ids(ids, num_tokens)], dim=1)
    rank = torch.arange(num_tokens, device=ids.device).expand(ids.shape[0], -1)
    return torch.empty_like(shuffle).scatter_(1, shuffle, rank)


def mask_to_ids(mask: torch.Tensor, num_kept: int | None = None) -> torch.Tensor:
    """Kept ids ``[B, K]`` (ascending) of a ``[B, N]`` mask: bool (True = masked) or 0/1 int/float (nonzero =
    masked, MAE's ``mask``).

    With ``num_kept`` given this is sync-free (with ``VMAE2_DEBUG=1`` every sample must keep exactly ``num_kept``
    tokens, asserted on the device: an inverted mask or a wrong count is refused); without it ``K`` is read from
    the mask (one host sync) and every sample must keep the same number of tokens.
    """
    if mask.ndim != 2 or mask.is_complex():
        raise ValueError(f"mask must be [B, N] bool, or 0/1 int or float (True / nonzero = masked), got "
                         f"{tuple(mask.shape)} {mask.dtype}")
    mask = mask if mask.dtype == torch.bool else mask != 0
    if num_kept is None:
        kept = (~mask).sum(dim=1)
        lo, hi = int(kept.min()), int(kept.max())
        if lo != hi:
            raise ValueError(f"masks keep between {lo} and {hi} tokens per sample; every sample must keep "
                             f"the same number (the sequence length is fixed per batch)")
        num_kept = lo
    elif checks.debug() and mask.numel():
        kept_ok = ((~mask).sum(dim=1) == num_kept).all()
        torch._assert_async(kept_ok, f"mask_to_ids: a sample's mask does not keep num_kept={num_kept} tokens; the "
                                     f"mask is True / nonzero = masked, False / 0 = kept (an inverted mask keeps the "
                                     f"masked tokens) (VMAE2_DEBUG=1 check)")
    # Stable sort of False(0) before True(1): kept ids first, each group ascending.
    return torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :num_kept]
