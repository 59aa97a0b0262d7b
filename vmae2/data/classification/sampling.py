"""Which frames and which pixels a classification clip uses: the official fine-tuning and test sampling.

Pure functions of the frame count, the frame size and a ``numpy`` generator (``None`` = deterministic
validation/test choice). Frame ids are 0-based and ascending (they may repeat for short videos).

* dense (Kinetics, UCF, HMDB: official ``VideoClsDataset``): a window of ``clip_len * rate`` frames, ``clip_len``
  ids spread over it by ``linspace`` (so the stride is about ``rate``, e.g. 64/15 = 4.27, not exactly 4);
* sparse (SSv2: official V2 ``RawFrameClsDataset``, TSN style): ``clip_len`` equal segments, one frame each;
* test views: ``num_segments`` temporal windows x ``num_crops`` spatial crops along the long side.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vmae2.data.pretraining.clips import IMAGENET_MEAN, IMAGENET_STD


def dense_ids(num_frames: int, clip_len: int = 16, rate: int = 4, rng: np.random.Generator | None = None
              ) -> np.ndarray:
    """Official dense sampling: training draws the window end uniformly from ``[clip_len*rate, n)``;
    ``rng=None`` (validation) centres the window. Videos no longer than the window take ``n // rate`` ids
    spread over the whole video, padded with the last frame."""
    span = clip_len * rate
    if num_frames <= span:
        count = max(num_frames // rate, 1) if num_frames >= rate else 1
        ids = np.linspace(0, num_frames, num=count)
        ids = np.concatenate([ids, np.full(clip_len - len(ids), num_frames)])
        return np.clip(ids, 0, num_frames - 1).astype(np.int64)
    end = (span + num_frames) // 2 if rng is None else int(rng.integers(span, num_frames))
    ids = np.linspace(end - span, end, num=clip_len)
    return np.clip(ids, end - span, end - 1).astype(np.int64)


def sparse_ids(num_frames: int, clip_len: int = 16, rng: np.random.Generator | None = None) -> np.ndarray:
    """Official V2 TSN sampling (``RawFrameClsDataset``): segments of ``avg = n // clip_len`` frames; training
    takes ``k * avg + uniform[0, avg)``, validation (``rng=None``) ``k * avg + avg // 2``. A video shorter than
    ``clip_len`` gives every frame, with frame 0 repeated in front."""
    avg = num_frames // clip_len
    k = np.arange(clip_len)
    if avg > 0:
        offset = np.full(clip_len, avg // 2) if rng is None else rng.integers(avg, size=clip_len)
        return (k * avg + offset).astype(np.int64)
    return np.concatenate([np.zeros(clip_len - num_frames), np.arange(num_frames)]).astype(np.int64)


def sparse_test_ids(num_frames: int, clip_len: int, view: int, num_views: int) -> np.ndarray:
    """Official V2 sparse test view ``view`` of ``num_views``: ``int(view * tick / num_views + tick * x)`` with
    ``tick = n / clip_len``, for ``x`` in ``range(clip_len)``."""
    tick = num_frames / clip_len
    return np.array([int(view * tick / num_views + tick * x) for x in range(clip_len)], dtype=np.int64)


def temporal_windows(length: int, clip_len: int, num_segments: int) -> list[np.ndarray]:
    """Positions (into the ``length`` frames decoded at stride ``rate``) of the ``num_segments`` test windows:
    starts ``int(k * (length - clip_len) / (num_segments - 1))`` (official); one segment is centred. Windows
    past the end repeat the last frame."""
    extra = max(length - clip_len, 0)
    if num_segments == 1:
        starts = [extra // 2]
    else:
        starts = [int(k * extra / (num_segments - 1)) for k in range(num_segments)]
    return [np.minimum(np.arange(s, s + clip_len), length - 1) for s in starts]


def short_side_resize(frames: torch.Tensor, size: int) -> torch.Tensor:
    """``[T, 3, H, W]`` uint8 -> short side ``size``, long side ``int(size * long / short)`` (official ``Resize``,
    bilinear without antialiasing like OpenCV's)."""
    h, w = frames.shape[-2:]
    oh, ow = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    if (oh, ow) == (h, w):
        return frames
    return F.interpolate(frames, size=(oh, ow), mode="bilinear", align_corners=False)


def crop_starts(long: int, size: int, num_crops: int) -> list[int]:
    """Starts of the ``num_crops`` test crops along the long side: ``int(c * (long - size) / (num_crops - 1))``
    (official), a single crop centred (``round((long - size) / 2)``, as ``CenterCrop``)."""
    if num_crops == 1:
        return [int(round((long - size) / 2.0))]
    return [int(c * (long - size) / (num_crops - 1)) for c in range(num_crops)]


def normalize(frames: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """``[T, 3, H, W]`` uint8 -> ``[3, T, H, W]`` float32, ``(x / 255 - mean) / std``."""
    x = frames.permute(1, 0, 2, 3).to(torch.float32).div_(255.0)
    m = torch.tensor(mean).view(3, 1, 1, 1)
    s = torch.tensor(std).view(3, 1, 1, 1)
    return x.sub_(m).div_(s)


def spatial_views(frames: torch.Tensor, size: int, short_side: int, num_crops: int) -> list[torch.Tensor]:
    """``[T, H, W, 3]`` uint8 frames -> ``num_crops`` normalised ``[3, T, size, size]`` views: short side to
    ``short_side``, then crops of ``size`` along the long side (centred across the short side)."""
    x = short_side_resize(frames.permute(0, 3, 1, 2), short_side)
    h, w = x.shape[-2:]
    if min(h, w) < size:
        raise ValueError(f"--short_side_size {short_side} is smaller than --input_size {size}")
    views = []
    for start in crop_starts(max(h, w), size, num_crops):
        across = int(round((min(h, w) - size) / 2.0))
        y0, x0 = (across, start) if w >= h else (start, across)
        views.append(normalize(x[..., y0:y0 + size, x0:x0 + size]))
    return views
