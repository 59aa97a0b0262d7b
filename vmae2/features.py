"""Clip features of videos, windowed as the official ``extract_tad_feature.py`` (TAD features), without its waste.

Layout and arithmetic of the official tool: windows of ``window`` frames (``frame_stride`` apart) starting every
``stride`` frames over ``range(0, n - span + 1, stride)`` (``span = (window - 1) * frame_stride + 1``; a last partial
window is dropped); each frame scaled to [0, 1] (``uint8 / 255``) and bilinearly resized to ``input_size`` square
(``F.interpolate(align_corners=False)``, aspect not kept), no ImageNet normalisation unless ``normalize``; the feature
of a window is ``model.forward_features`` (``fc_norm`` of the mean token, ``[C]``) or, with ``tokens``, the last
block's tokens ``[N, C]``.

How it differs from the official loop (decode 16 frames per window by random access, transform them, batch 1):
every frame is decoded once, streaming, and preprocessed once (the official transform resizes the ``[C, T, H, W]``
tensor with ``T`` as the channel dimension, i.e. every frame on its own: resizing frame chunks gives the same values);
windows are views into a buffer of the preprocessed frames that the next windows still need, and run through the
model ``batch_size`` at a time (bf16 autocast on CUDA, fp32 on CPU). Batches never mix videos, so a video's features
do not depend on which other videos a run holds.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from vmae2.cli import resolve_precision
from vmae2.data.decode import BadVideo, iter_frames
from vmae2.training.distributed import AMP_DTYPES
from vmae2_kernels import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

CHUNK = 32  # frames decoded and preprocessed together


def window_starts(num_frames: int, window: int, stride: int, frame_stride: int = 1) -> range:
    """First frames of the complete windows of a ``num_frames`` video (official: ``range(0, n - 15, step)``)."""
    if min(window, stride, frame_stride) < 1:
        raise ValueError(f"window, stride and frame_stride must be >= 1, got {window}, {stride}, {frame_stride}")
    return range(0, max(num_frames - (window - 1) * frame_stride, 0), stride)


def preprocess(frames: torch.Tensor, input_size: int, normalize: bool = False) -> torch.Tensor:
    """RGB uint8 ``[F, H, W, 3]`` -> float32 ``[3, F, input_size, input_size]``: the official ``ToFloatTensorInZeroOne``
    then ``Resize((input_size, input_size))`` (bilinear, ``align_corners=False``), then ImageNet mean/std when
    ``normalize`` (the official tool does not normalise)."""
    x = frames.permute(3, 0, 1, 2).to(torch.float32) / 255
    x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
    if normalize:
        mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=x.device).view(3, 1, 1, 1)
        std = torch.tensor(IMAGENET_DEFAULT_STD, device=x.device).view(3, 1, 1, 1)
        x = (x - mean) / std
    return x


def embed_clips(model: torch.nn.Module, clips: torch.Tensor, tokens: bool = False, precision: str = "auto"
                ) -> torch.Tensor:
    """``clips [B, 3, T, H, W]`` -> float32 ``[B, C]`` (``forward_features``: ``fc_norm`` of the mean token) or, with
    ``tokens``, ``[B, N, C]`` (the last block's tokens, ``(t, h, w)`` order), under ``inference_mode``.
    ``precision``: ``auto`` (bf16 autocast on CUDA, fp32 elsewhere, as training), ``bf16``, ``fp16`` or ``fp32``."""
    device_type = clips.device.type
    amp_dtype = AMP_DTYPES[resolve_precision(precision, device_type)]
    with torch.inference_mode(), torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = model.forward_tokens(clips) if tokens else model.forward_features(clips)
    return out.float()


def default_batch_size(model: torch.nn.Module, device: torch.device) -> int:
    """Windows per model call: 8 on a CPU; on a GPU what a rough inference footprint (about 40 bytes per token and
    channel: one block's bf16 activations and the fp32 input) lets half the free memory hold, between 1 and 64."""
    if device.type != "cuda":
        return 8
    free, _ = torch.cuda.mem_get_info(device)
    tokens = model.patch_embed.num_patches
    return int(min(64, max(1, free // 2 // (40 * tokens * model.cfg.embed_dim))))


class WindowFeatures:
    """The windows of one video, from its preprocessed frames arriving in order: ``add(frames [3, F, S, S])`` as
    often as needed, then ``finish()`` -> ``[num_windows, C]`` (or ``[num_windows, N, C]``) float32 numpy, windows in
    start order. Holds only the frames later windows still need, plus up to ``batch_size`` pending windows."""

    def __init__(self, model: torch.nn.Module, window: int, stride: int, frame_stride: int, batch_size: int,
                 tokens: bool = False, precision: str = "auto"):
        self.model, self.window, self.stride, self.frame_stride = model, window, stride, frame_stride
        self.span = (window - 1) * frame_stride + 1
        self.batch_size, self.tokens, self.precision = batch_size, tokens, precision
        self.buf: torch.Tensor | None = None  # frames [base, end)
        self.base = self.end = self.next = 0
        self.pending: list[torch.Tensor] = []
        self.out: list[torch.Tensor] = []

    def add(self, frames: torch.Tensor) -> None:
        self.buf = frames if self.buf is None else torch.cat([self.buf, frames], dim=1)
        self.end += frames.shape[1]
        while self.next + self.span <= self.end:
            first = self.next - self.base
            self.pending.append(self.buf[:, first:first + self.span:self.frame_stride])
            self.next += self.stride
            if len(self.pending) == self.batch_size:
                self._run()
        drop = min(self.next, self.end) - self.base
        self.buf, self.base = self.buf[:, drop:], self.base + drop

    def _run(self) -> None:
        self.out.append(embed_clips(self.model, torch.stack(self.pending), self.tokens, self.precision))
        self.pending = []

    @property
    def num_windows(self) -> int:
        return len(window_starts(self.end, self.window, self.stride, self.frame_stride))

    def finish(self, name: str = "video") -> np.ndarray:
        """The features (one device -> host copy); ``BadVideo("too_short")`` when not one window fits."""
        if self.pending:
            self._run()
        if not self.out:
            raise BadVideo("too_short", name, f"{self.end} frames < one window of {self.span}")
        return torch.cat(self.out).cpu().numpy()


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def extract(model: torch.nn.Module, video, window: int = 16, stride: int = 4, frame_stride: int = 1,
            input_size: int = 224, normalize: bool = False, batch_size: int | None = None, tokens: bool = False,
            precision: str = "auto") -> np.ndarray:
    """Features of every window of ``video`` (a file path, or RGB uint8 ``[T, H, W, 3]`` numpy array or tensor):
    float32 ``[num_windows, C]`` (``[num_windows, N, C]`` with ``tokens``); see the module docstring. ``model`` is a
    ``VisionTransformer`` built for ``num_frames=window``, ``img_size=input_size``, on its device, in eval mode.
    Raises :class:`~vmae2.data.decode.BadVideo` for unreadable files and videos shorter than one window."""
    device = _model_device(model)
    if batch_size is None:
        batch_size = default_batch_size(model, device)
    if isinstance(video, (str, os.PathLike)):
        name, chunks = str(video), iter_frames(str(video), CHUNK)
    else:
        frames = torch.as_tensor(video)
        name, chunks = "tensor", (frames[i:i + CHUNK] for i in range(0, len(frames), CHUNK))
    windows = WindowFeatures(model, window, stride, frame_stride, batch_size, tokens, precision)
    for chunk in chunks:
        windows.add(preprocess(torch.as_tensor(chunk).to(device), input_size, normalize))
    return windows.finish(name)
