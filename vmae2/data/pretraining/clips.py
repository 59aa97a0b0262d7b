"""Pretraining clips: plan, decode and augment one list entry, with the bad-file policy.

Bad files never stop a run and are never hidden: a sample whose file fails is replaced by a substitute chosen
from ``(seed, epoch, index, attempt)`` only (so the result does not depend on timing or worker count), and
every failure is reported back with its path and reason for counting, logging and the quarantine list.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from vmae2.data.decode import BadVideo, VideoInfo, decode_frames, probe
from vmae2.data.lists import VideoRecord
from vmae2.data.pretraining.sampling import OFFICIAL_SCALES, ClipPlan, Crop, plan_clip, plan_rng
from vmae2_kernels import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN  # one definition (re-exported here)
from vmae2_kernels import IMAGENET_DEFAULT_STD as IMAGENET_STD


@dataclass(frozen=True)
class ClipConfig:
    """Official pretraining defaults: 16 frames every 4th, 224 px, scales (1, .875, .75, .66)."""

    clip_len: int = 16
    input_size: int = 224
    num_sample: int = 1
    scales: tuple[float, ...] = OFFICIAL_SCALES
    min_frames: int | None = None  # fewer decodable frames is ``too_short``; None: clip_len (see MIN_FRAMES_RULE)
    max_attempts: int = 20
    codecs: frozenset[str] | None = None  # allowed codecs (None: any that decodes)

    def __post_init__(self):
        if self.clip_len < 1 or self.input_size < 1 or self.num_sample < 1:
            raise ValueError(f"clip_len {self.clip_len}, input_size {self.input_size} and num_sample "
                             f"{self.num_sample} must be positive")
        if self.min_frames is None:
            object.__setattr__(self, "min_frames", self.clip_len)


@dataclass
class PlannedClip:
    """What the pipeline executes for one batch slot; ``failures`` are the bad files met on the way."""

    slot: int  # position in the epoch order (seeds the plan)
    record_index: int  # the record actually used (differs from the sampled one after a substitution)
    record: VideoRecord
    info: VideoInfo
    plan: ClipPlan
    failures: list[BadVideo] = field(default_factory=list)


@dataclass
class Batch:
    """One pretraining batch, from either backend (torch workers or DALI)."""
    video: torch.Tensor  # [B * num_sample, 3, T, S, S] float32
    slots: list[int]  # position of each clip in the epoch order
    record_indices: list[int]  # the record each clip came from (after substitution)


class ClipSource:
    """Turns epoch positions into planned (and, for the PyTorch path, decoded and augmented) clips."""

    def __init__(self, records: list[VideoRecord], config: ClipConfig = ClipConfig(), seed: int = 0):
        if not records:
            raise ValueError("the data list is empty; check --data_path and the list file")
        self.records, self.config, self.seed = records, config, seed
        self.epoch = 0
        self._info: dict[int, VideoInfo] = {}  # probe cache (per process)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def candidates(self, slot: int, record_index: int):
        """``record_index`` first, then substitutes drawn from ``(seed, epoch, slot)`` alone."""
        yield record_index
        rng = np.random.default_rng([self.seed, self.epoch, slot, 0xBAD])
        for _ in range(self.config.max_attempts - 1):
            yield int(rng.integers(len(self.records)))

    def _info_for(self, i: int) -> VideoInfo:
        if i not in self._info:
            self._info[i] = probe(self.records[i], self.config.min_frames, self.config.codecs)
        return self._info[i]

    def plan(self, slot: int, record_index: int, failures: list[BadVideo] | None = None,
             skip=frozenset()) -> PlannedClip:
        """Probe and plan the clip for epoch position ``slot`` from ``record_index`` (or its first good
        substitute). ``skip`` holds record indices already known bad for this slot."""
        failures = [] if failures is None else failures
        for i in self.candidates(slot, record_index):
            if i in skip:
                continue
            try:
                info = self._info_for(i)
            except BadVideo as bad:
                failures.append(bad)
                continue
            rec, cfg = self.records[i], self.config
            rng = plan_rng(self.seed, self.epoch, slot)
            plan = plan_clip(info.num_frames, info.width, info.height, rng, clip_len=cfg.clip_len, step=rec.step,
                             num_sample=cfg.num_sample, input_size=cfg.input_size, scales=cfg.scales)
            return PlannedClip(slot, i, rec, info, plan, failures)
        raise RuntimeError(f"{self.config.max_attempts} candidates for slot {slot} were all unreadable; last: "
                           f"{failures[-1] if failures else 'none'}. Run `python -m vmae2.data.check LIST`.")

    def load_slot(self, slot: int, record_index: int, out: torch.Tensor | None = None) -> PlannedClip:
        """Decode and augment one epoch position (PyTorch path) into ``out [num_sample, 3, T, S, S]`` float32."""
        failures: list[BadVideo] = []
        skip: set[int] = set()
        while True:
            clip = self.plan(slot, record_index, failures, skip)
            try:
                frames = decode_frames(clip.record, clip.plan.frame_ids, clip.info)
            except BadVideo as bad:
                failures.append(bad)
                skip.add(clip.record_index)
                continue
            clip.failures = failures
            cfg = self.config
            if out is None:
                out = torch.empty(cfg.num_sample, 3, cfg.clip_len, cfg.input_size, cfg.input_size)
            for view, crop in zip(out, clip.plan.crops):
                augment(frames, crop, cfg.input_size, out=view)
            return clip

    def load_batch(self, pairs: list[tuple[int, int]]):
        """The epoch positions ``pairs = [(slot, record_index), ...]`` as one batch (PyTorch path):
        ``(video [len(pairs) * num_sample, 3, T, S, S], slots, record indices used, failures)``."""
        cfg = self.config
        video = torch.empty(len(pairs) * cfg.num_sample, 3, cfg.clip_len, cfg.input_size, cfg.input_size)
        records, failures = [], []
        for i, (slot, record_index) in enumerate(pairs):
            clip = self.load_slot(slot, record_index, out=video[i * cfg.num_sample:(i + 1) * cfg.num_sample])
            records.append(clip.record_index)
            failures.extend(clip.failures)
        return video, [slot for slot, _ in pairs], records, failures


def augment(frames: np.ndarray, crop: Crop, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """Crop ``[T, H, W, 3]`` uint8 frames, resize to ``size`` and normalise: ``[3, T, size, size]`` float32
    (written into ``out`` when given).

    The resize runs on uint8 (antialiased bilinear, which equals PIL's ``BILINEAR`` exactly, like the official
    per-frame PIL resize) before any float conversion, so only the small output is ever made float.
    """
    x = torch.from_numpy(frames[:, crop.y:crop.y + crop.h, crop.x:crop.x + crop.w]).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    out = torch.empty(3, x.shape[0], size, size) if out is None else out
    out.copy_(x.permute(1, 0, 2, 3))  # uint8 -> float32 and T<->C in one pass
    scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(3, 1, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std)]).view(3, 1, 1, 1)
    return out.mul_(scale).sub_(shift)  # (x / 255 - mean) / std
