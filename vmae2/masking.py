"""Encoder and decoder masks for VideoMAE V2 dual masking.

Conventions: ``grid = (T', H', W')`` tokens, flattened in ``(t, h, w)`` order (``n = t*H'*W' + h*W' + w``).
A *mask* is ``[B, N]`` bool with **True = masked** (dropped). An *ids* tensor is ``[B, K]`` int64 holding
the kept (visible) token indices of each sample, **sorted ascending**, same ``K`` for every sample.

Masks are drawn for the whole batch at once on the target device, reproducibly from a
``torch.Generator`` (drawn on the generator's device when one is given). No host sync.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

Grid = Sequence[int]

RUNNING_CELL_RATIOS = (0.25, 0.5, 0.75)
DECODER_MASK_TYPES = ("run_cell", "frame", "random")


def _check_grid(grid: Grid) -> tuple[int, int, int]:
    if len(grid) != 3 or any(int(g) != g or g < 1 for g in grid):
        raise ValueError(f"grid {tuple(grid)} must be three positive integers (T', H', W')")
    return tuple(int(g) for g in grid)


def _check_ratio(ratio: float, name: str = "ratio") -> None:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"{name} {ratio} is out of range; use a value in [0, 1) (e.g. 0.9 for the encoder)")


def _device(device, generator: torch.Generator | None) -> torch.device:
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def _rand(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=_device(device, generator))


# -- conversions --------------------------------------------------------------------------------------

def mask_to_ids(mask: torch.Tensor, num_kept: int | None = None) -> torch.Tensor:
    """Kept ids ``[B, K]`` (ascending) of a ``[B, N]`` bool mask (True = masked).

    With ``num_kept`` given this is sync-free; without it ``K`` is read from the mask (one host sync) and
    every sample must keep the same number of tokens.
    """
    if mask.dtype != torch.bool or mask.ndim != 2:
        raise ValueError(f"mask must be [B, N] bool (True = masked), got {tuple(mask.shape)} {mask.dtype}")
    if num_kept is None:
        kept = (~mask).sum(dim=1)
        lo, hi = int(kept.min()), int(kept.max())
        if lo != hi:
            raise ValueError(f"masks keep between {lo} and {hi} tokens per sample; every sample must keep "
                             f"the same number (the sequence length is fixed per batch)")
        num_kept = lo
    # Stable sort of False(0) before True(1): kept ids first, each group ascending.
    return torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :num_kept]


def ids_to_mask(ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Inverse of :func:`mask_to_ids`: ``[B, N]`` bool, False at ``ids``, True elsewhere."""
    mask = torch.ones(ids.shape[0], num_tokens, dtype=torch.bool, device=ids.device)
    return mask.scatter_(1, ids, False)


def complement_ids(ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The ``N - K`` ids not in ``ids``, ascending: ``[B, N - K]``. Sync-free."""
    order = torch.argsort(ids_to_mask(ids, num_tokens).to(torch.int8), dim=1, stable=True)
    return order[:, ids.shape[1]:]


def as_ids(mask_or_ids: torch.Tensor, num_tokens: int, name: str = "mask") -> torch.Tensor:
    """Kept ids ``[B, K]`` int64 from a ``[B, N]`` bool mask (one host sync) or from ids (passed through)."""
    if mask_or_ids.ndim != 2:
        raise ValueError(f"{name} must be 2-D ([B, N] bool mask or [B, K] ids), got shape {tuple(mask_or_ids.shape)}")
    if mask_or_ids.dtype == torch.bool:
        if mask_or_ids.shape[1] != num_tokens:
            raise ValueError(f"{name} has {mask_or_ids.shape[1]} tokens per sample; the model has {num_tokens}")
        return mask_to_ids(mask_or_ids)
    if mask_or_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} must be a bool mask or int64 ids, got dtype {mask_or_ids.dtype}")
    if mask_or_ids.shape[1] > num_tokens:
        raise ValueError(f"{name} holds {mask_or_ids.shape[1]} ids per sample but there are only {num_tokens} tokens")
    return mask_or_ids.long()


def dual_ids(encoder_mask: torch.Tensor, decoder_mask: torch.Tensor | None,
             num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(encoder-visible ids, decoder-visible ids)`` from masks or ids.

    ``decoder_mask=None`` is VideoMAE v1: the decoder reconstructs every encoder-masked token.
    """
    vis = as_ids(encoder_mask, num_tokens, "encoder_mask")
    if decoder_mask is None:
        return vis, complement_ids(vis, num_tokens)
    dec = as_ids(decoder_mask, num_tokens, "decoder_mask")
    if dec.shape[0] != vis.shape[0]:
        raise ValueError(f"encoder_mask has batch {vis.shape[0]} but decoder_mask has batch {dec.shape[0]}")
    return vis, dec


# -- encoder masks ------------------------------------------------------------------------------------

def tube_num_masked(grid: Grid, ratio: float) -> int:
    """Masked tokens per frame of a tube mask: ``int(ratio * H' * W')`` (the official floor)."""
    _, h, w = _check_grid(grid)
    _check_ratio(ratio)
    return int(ratio * h * w)


def tube_ids(batch_size: int, grid: Grid, ratio: float, *, generator=None, device=None) -> torch.Tensor:
    """Encoder-visible ids ``[B, T' * (H'W' - m)]`` of tube masks, ``m = int(ratio * H'W')``.

    Each sample masks a uniformly random set of ``m`` spatial positions in every temporal slice
    (a tube through time), like the official ``TubeMaskingGenerator``.
    """
    t, h, w = _check_grid(grid)
    m = tube_num_masked(grid, ratio)
    perm = _rand((batch_size, h * w), generator, device).argsort(dim=1)
    spatial = perm[:, m:].sort(dim=1).values  # visible spatial positions, ascending
    offsets = torch.arange(t, device=spatial.device)[:, None] * (h * w)
    return (offsets[None] + spatial[:, None, :]).reshape(batch_size, -1)


def tube_mask(batch_size: int, grid: Grid, ratio: float, *, generator=None, device=None) -> torch.Tensor:
    """Tube mask ``[B, N]`` bool (True = masked); see :func:`tube_ids`."""
    ids = tube_ids(batch_size, grid, ratio, generator=generator, device=device)
    return ids_to_mask(ids, math.prod(_check_grid(grid)))


def random_ids(batch_size: int, grid: Grid, ratio: float, *, generator=None, device=None) -> torch.Tensor:
    """Kept ids ``[B, N - int(ratio * N)]`` of uniformly random masks over all ``N`` tokens."""
    n = math.prod(_check_grid(grid))
    _check_ratio(ratio)
    m = int(ratio * n)
    perm = _rand((batch_size, n), generator, device).argsort(dim=1)
    return perm[:, m:].sort(dim=1).values


def random_mask(batch_size: int, grid: Grid, ratio: float, *, generator=None, device=None) -> torch.Tensor:
    """Uniformly random mask ``[B, N]`` bool masking ``int(ratio * N)`` tokens per sample."""
    ids = random_ids(batch_size, grid, ratio, generator=generator, device=device)
    return ids_to_mask(ids, math.prod(_check_grid(grid)))


# -- decoder masks ------------------------------------------------------------------------------------

def _running_cell_masked_per_cell(ratio: float) -> int:
    if ratio not in RUNNING_CELL_RATIOS:
        raise ValueError(
            f"running-cell ratio {ratio} is not supported; the 2x2 cell allows {RUNNING_CELL_RATIOS} "
            f"(the official generator floors other values to these and asserts ratio >= 0.25)")
    return int(4 * ratio)


def _check_even(grid: Grid) -> tuple[int, int, int]:
    t, h, w = _check_grid(grid)
    if h % 2 or w % 2:
        raise ValueError(f"running-cell masking needs an even spatial grid, got H'={h}, W'={w} "
                         f"(the 2x2 cell must tile the frame; use an image size giving even H'/W')")
    return t, h, w


def running_cell_mask(batch_size: int, grid: Grid, ratio: float = 0.5, *, phase=None,
                      generator=None, device=None) -> torch.Tensor:
    """Running-cell decoder mask ``[B, N]`` bool (True = not reconstructed by the decoder).

    Closed form of the official ``RunningCellMaskingGenerator``: with cell slot
    ``j = 2*(h%2) + (w%2)`` and ``m = int(4*ratio)`` masked slots per 2x2 cell,
    ``mask[t, h, w] = (j + phase + t + 1) % 4 < m``. ``phase`` (int or ``[B]`` tensor in 0..3) equals the
    official row ``all_mask_maps[phase]``; ``None`` draws it uniformly per sample.
    """
    t, h, w = _check_even(grid)
    m = _running_cell_masked_per_cell(ratio)
    dev = _device(device, generator)
    if phase is None:
        phase = torch.randint(0, 4, (batch_size,), generator=generator, device=dev)
    elif isinstance(phase, int):
        if not 0 <= phase < 4:
            raise ValueError(f"phase {phase} is out of range; use 0, 1, 2 or 3")
        phase = torch.full((batch_size,), phase, dtype=torch.long, device=dev)
    else:
        phase = torch.as_tensor(phase, device=dev).long()
        if phase.shape != (batch_size,):
            raise ValueError(f"phase has shape {tuple(phase.shape)}; expected ({batch_size},)")
    hh = torch.arange(h, device=dev)[:, None] % 2
    ww = torch.arange(w, device=dev)[None, :] % 2
    slot = (2 * hh + ww).flatten()  # [H'W']
    tt = torch.arange(t, device=dev)[:, None]
    code = slot[None, :] + tt + 1  # [T', H'W']
    return ((code[None] + phase[:, None, None]) % 4 < m).reshape(batch_size, -1)


def running_cell_num_kept(grid: Grid, ratio: float = 0.5) -> int:
    """Decoder-visible tokens per sample: ``N * (4 - m) / 4``."""
    t, h, w = _check_even(grid)
    return t * h * w * (4 - _running_cell_masked_per_cell(ratio)) // 4


def running_cell_ids(batch_size: int, grid: Grid, ratio: float = 0.5, *, phase=None,
                     generator=None, device=None) -> torch.Tensor:
    """Decoder-visible ids ``[B, N*(4-m)/4]`` (ascending) of :func:`running_cell_mask`."""
    mask = running_cell_mask(batch_size, grid, ratio, phase=phase, generator=generator, device=device)
    return mask_to_ids(mask, running_cell_num_kept(grid, ratio))


def frame_ids(batch_size: int, grid: Grid, ratio: float = 0.5, *, generator=None, device=None) -> torch.Tensor:
    """Decoder-visible ids of *frame* masking (paper ablation): ``int(ratio*T')`` random whole temporal
    slices are masked per sample, the other slices are reconstructed in full."""
    t, h, w = _check_grid(grid)
    _check_ratio(ratio)
    m = int(ratio * t)
    frames = _rand((batch_size, t), generator, device).argsort(dim=1)[:, m:].sort(dim=1).values
    within = torch.arange(h * w, device=frames.device)
    return (frames[:, :, None] * (h * w) + within).reshape(batch_size, -1)


def frame_mask(batch_size: int, grid: Grid, ratio: float = 0.5, *, generator=None, device=None) -> torch.Tensor:
    """Frame decoder mask ``[B, N]`` bool; see :func:`frame_ids`."""
    ids = frame_ids(batch_size, grid, ratio, generator=generator, device=device)
    return ids_to_mask(ids, math.prod(_check_grid(grid)))


def decoder_ids(kind: str, batch_size: int, grid: Grid, ratio: float, *, generator=None,
                device=None) -> torch.Tensor:
    """Decoder-visible ids for ``kind`` in :data:`DECODER_MASK_TYPES` (``run_cell`` is the official one)."""
    if kind == "run_cell":
        return running_cell_ids(batch_size, grid, ratio, generator=generator, device=device)
    if kind == "frame":
        return frame_ids(batch_size, grid, ratio, generator=generator, device=device)
    if kind == "random":
        return random_ids(batch_size, grid, ratio, generator=generator, device=device)
    raise ValueError(f"decoder mask type {kind!r} is unknown; choose one of {DECODER_MASK_TYPES}")
