"""The official ``extract_tad_feature.py`` per-window procedure (reference section 7.3), restated for the tests and
the benchmark, with PyAV standing in for decord.

Per video: ``n`` = the frame count (decord: ``len(vr)``, here the stream header); window starts
``range(0, n - 15, step)`` (step 4 THUMOS14, 16 FineAction; the last partial window dropped); per window a random-
access read of its 16 consecutive frames (``vr.get_batch(np.arange(start, start + 16))``: here a seek to the keyframe
at or before ``start`` and a decode up to ``start + 15``), then ``ToFloatTensorInZeroOne`` (uint8 ``[T, H, W, C]`` ->
``[C, T, H, W]`` float32 / 255) and ``Resize((224, 224))`` (``F.interpolate`` bilinear, ``align_corners=False``, on
the ``[C, T, H, W]`` tensor: ``T`` is the channel dimension), no mean/std normalisation;
``model.forward_features(x[None])`` -> ``[1, C]`` in fp32, batch 1; the rows stacked -> ``[num_windows, C]``.
"""
from __future__ import annotations

import av
import numpy as np
import torch
import torch.nn.functional as F

from vmae2.data.decode import to_rgb

WINDOW = 16
STEPS = {"thumos14": 4, "fineaction": 16}


def frame_count(path) -> int:
    with av.open(str(path)) as container:
        return container.streams.video[0].frames


def official_starts(num_frames: int, step: int) -> range:
    return range(0, num_frames - 15, step)


def read_window(path, start: int, length: int = WINDOW) -> np.ndarray:
    """RGB uint8 ``[length, H, W, 3]`` of frames ``start .. start + length - 1``: seek, then decode (random access)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate, base, first_pts = stream.average_rate, stream.time_base, stream.start_time or 0
        container.seek(first_pts + int(start / (rate * base)), stream=stream, backward=True, any_frame=False)
        frames = {}
        for frame in container.decode(stream):
            index = int(round(float((frame.pts - first_pts) * base * rate)))
            if start <= index < start + length:
                frames[index] = to_rgb(frame)  # rgb24, one swscale thread
            if index >= start + length - 1:
                break
    return np.stack([frames[i] for i in range(start, start + length)])


def official_transform(frames: np.ndarray, size: int = 224) -> torch.Tensor:
    """``ToFloatTensorInZeroOne`` then ``Resize((size, size))``: ``[C, T, size, size]`` float32 in [0, 1]."""
    vid = torch.from_numpy(frames).permute(3, 0, 1, 2).to(torch.float32) / 255
    return F.interpolate(vid, size=(size, size), mode="bilinear", align_corners=False)


@torch.no_grad()
def official_extract(model: torch.nn.Module, path, step: int = 4, size: int = 224) -> np.ndarray:
    """``[num_windows, C]`` float32: the official loop, one window at a time."""
    rows = [model.forward_features(official_transform(read_window(path, start), size)[None])
            for start in official_starts(frame_count(path), step)]
    return torch.cat(rows).numpy().astype(np.float32)
