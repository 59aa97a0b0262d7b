"""The official pretraining sampling plan: which frames, which crop per view. Pure Python, deterministic.

Every random choice for sample ``index`` in ``epoch`` comes from ``numpy.random.default_rng((seed, epoch,
index))``, so a plan depends only on the seed, epoch and index: never on worker count, timing or backend.
Both the DALI and the plain-PyTorch pipelines execute the same plans.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OFFICIAL_SCALES = (1.0, 0.875, 0.75, 0.66)


@dataclass(frozen=True)
class Crop:
    """A crop box in source pixels: top-left ``(x, y)``, size ``(w, h)``."""

    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class ClipPlan:
    """Frames to decode (0-based, possibly repeated) and one crop per view (``num_sample`` views)."""

    frame_ids: tuple[int, ...]
    crops: tuple[Crop, ...]


def plan_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def sample_start(num_frames_total: int, clip_len: int, step: int, rng: np.random.Generator) -> int:
    """Official start: uniform over ``[0, n - clip_len*step]``; 0 when the video is shorter than that span."""
    span = num_frames_total - clip_len * step + 1
    return int(rng.integers(span)) if span > 0 else 0


def frame_ids(start: int, num_frames_total: int, clip_len: int = 16, step: int = 4) -> tuple[int, ...]:
    """Official frame list: ``start, start+step, ...``; the position stops advancing once the next step would
    reach the end (1-based ``offset + step < n``), so a short video repeats its last reachable frame."""
    offset = start + 1  # the official loader counts from 1
    ids = []
    for _ in range(clip_len):
        ids.append(offset - 1)
        if offset + step < num_frames_total:
            offset += step
    return tuple(ids)


def crop_candidates(width: int, height: int, input_size: int = 224, scales=OFFICIAL_SCALES,
                    max_distort: int = 1) -> list[tuple[int, int]]:
    """``(w, h)`` crop sizes of the official multi-scale crop: sides ``int(min(W, H) * s)`` (snapped to
    ``input_size`` when within 3 px), width and height scale indices at most ``max_distort`` apart."""
    base = min(width, height)
    sides = [int(base * s) for s in scales]
    sides = [input_size if abs(s - input_size) < 3 else s for s in sides]
    return [(w, h) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= max_distort]


def fixed_offsets(width: int, height: int, crop_w: int, crop_h: int) -> list[tuple[int, int]]:
    """The 13 fixed crop positions: corners, centre, edge centres and quarter points (steps of ``(W-w)//4``)."""
    sx, sy = (width - crop_w) // 4, (height - crop_h) // 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    return [(i * sx, j * sy) for i, j in grid]


def multiscale_crop(width: int, height: int, rng: np.random.Generator, input_size: int = 224,
                    scales=OFFICIAL_SCALES) -> Crop:
    """One draw of the official ``GroupMultiScaleCrop`` (fixed-offset variant) for a ``width x height`` frame."""
    pairs = crop_candidates(width, height, input_size, scales)
    w, h = pairs[int(rng.integers(len(pairs)))]
    offsets = fixed_offsets(width, height, w, h)
    x, y = offsets[int(rng.integers(len(offsets)))]
    return Crop(x, y, w, h)


def plan_clip(num_frames_total: int, width: int, height: int, rng: np.random.Generator, *, clip_len: int = 16,
              step: int = 4, num_sample: int = 1, input_size: int = 224, scales=OFFICIAL_SCALES) -> ClipPlan:
    """Frames of one clip and ``num_sample`` independent crops (the official repeated sampling)."""
    start = sample_start(num_frames_total, clip_len, step, rng)
    ids = frame_ids(start, num_frames_total, clip_len, step)
    crops = tuple(multiscale_crop(width, height, rng, input_size, scales) for _ in range(num_sample))
    return ClipPlan(ids, crops)
