"""Labeled clips for fine-tuning, validation and multi-view testing (PyAV + PyTorch workers).

Batches:

* ``train``: ``num_sample`` augmented views of each video (official repeated sampling), sample-major, with the
  video's label per view: ``video [B * num_sample, 3, T, S, S]``, ``labels [B * num_sample]``.
* ``val``: one centred window, short side resized, centre crop (official validation).
* ``test``: ``num_segments x num_crops`` views per video (segment-major), with ``video_index`` (the record)
  and ``view_index`` per row, for :mod:`vmae2.metrics`.

Every random choice of epoch position ``slot`` comes from ``(seed, epoch, slot)`` only. Bad files: in
training a deterministic substitute takes the slot; in val/test the video is left out. Either way every bad
file is counted, logged once and written to the quarantine list; evaluation reports how many videos it
could not score.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from vmae2.data.decode import BadVideo, decode_frames, probe
from vmae2.data.lists import MixedList, VideoRecord, rank_slice
from vmae2.data.pretraining.loader import batch_loader
from vmae2.data.pretraining.sampling import plan_rng
from vmae2.data.telemetry import BadFileLedger, Telemetry
from vmae2.data.classification.sampling import dense_ids, sparse_ids, sparse_test_ids, spatial_views, temporal_windows

__all__ = ["ClassifyConfig", "ClassifyLoader", "ClassifySource", "LabeledBatch", "MODES"]

MODES = ("train", "val", "test")
TrainTransform = Callable[[torch.Tensor, np.random.Generator], torch.Tensor]


@dataclass(frozen=True)
class ClassifyConfig:
    """Clip geometry and sampling (official fine-tuning defaults: 16 frames, rate 4, 224 px, 2 views)."""

    clip_len: int = 16
    rate: int = 4
    input_size: int = 224
    short_side_size: int = 224
    sparse: bool = False  # TSN sampling (SSv2) instead of dense windows
    num_sample: int = 1  # training views per decoded video
    num_segments: int = 5  # test: temporal windows
    num_crops: int = 3  # test: spatial crops
    num_classes: int | None = None
    max_attempts: int = 20
    min_frames: int | None = None  # fewer decodable frames is ``too_short``; None: clip_len (see MIN_FRAMES_RULE)

    def __post_init__(self):
        if self.min_frames is None:
            object.__setattr__(self, "min_frames", self.clip_len)
        for name in ("clip_len", "rate", "input_size", "short_side_size", "num_sample", "num_segments",
                     "num_crops", "max_attempts", "min_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)} must be >= 1")

    @property
    def views_per_video(self) -> int:
        return self.num_segments * self.num_crops


@dataclass
class LabeledBatch:
    video: torch.Tensor  # [N, 3, T, S, S] float32
    labels: torch.Tensor  # [N] int64
    video_index: torch.Tensor  # [N] int64: the record each row came from
    view_index: torch.Tensor  # [N] int64: the view of that record (train: the repeated-sampling view)
    slots: list[int]


def _check_label(record: VideoRecord, num_classes: int | None) -> None:
    if record.label < 0 or (num_classes is not None and record.label >= num_classes):
        raise ValueError(f"{record.path} (from {record.source}) has label {record.label}, outside [0, {num_classes}); "
                         "fix the list or --nb_classes")


class ClassifySource:
    """Turns ``(slot, record_index)`` into decoded, transformed views with their labels."""

    def __init__(self, records: Sequence[VideoRecord], mode: str, config: ClassifyConfig, seed: int = 0,
                 transform: TrainTransform | None = None):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} must be one of {MODES}")
        if not records:
            raise ValueError("the labeled list is empty; check the list file")
        for r in records:
            _check_label(r, config.num_classes)
        if mode == "train" and transform is None:
            raise ValueError("training needs a transform (e.g. vmae2.data.classification.augment.FinetuneAugment)")
        self.records, self.mode, self.config, self.seed, self.transform = list(records), mode, config, seed, transform
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def frame_ids(self, num_frames: int, rng: np.random.Generator | None) -> np.ndarray:
        c = self.config
        if c.sparse:
            return sparse_ids(num_frames, c.clip_len, rng)
        return dense_ids(num_frames, c.clip_len, c.rate, rng)

    def _decode(self, record: VideoRecord, rng: np.random.Generator | None) -> torch.Tensor:
        info = probe(record, self.config.min_frames)
        ids = self.frame_ids(info.num_frames, rng)
        return torch.from_numpy(decode_frames(record, np.sort(ids), info))

    def train_views(self, slot: int, record_index: int, failures: list) -> tuple[torch.Tensor, int, int]:
        """``([num_sample, 3, T, S, S], label, record used)``; a bad file is replaced by a substitute drawn
        from ``(seed, epoch, slot)`` alone."""
        candidates = np.random.default_rng([self.seed, self.epoch, slot, 0xBAD])
        i = record_index
        for _ in range(self.config.max_attempts):
            rng = plan_rng(self.seed, self.epoch, slot)
            try:
                frames = self._decode(self.records[i], rng)
            except BadVideo as bad:
                failures.append(bad)
                i = int(candidates.integers(len(self.records)))
                continue
            views = torch.stack([self.transform(frames, rng) for _ in range(self.config.num_sample)])
            return views, self.records[i].label, i
        raise RuntimeError(f"{self.config.max_attempts} candidates for slot {slot} were all unreadable; last: "
                           f"{failures[-1]}. Run `python -m vmae2.data.check LIST`.")

    def eval_views(self, record_index: int) -> torch.Tensor:
        """val: ``[1, 3, T, S, S]``; test: ``[num_segments * num_crops, 3, T, S, S]`` (segment-major)."""
        c, record = self.config, self.records[record_index]
        if self.mode == "val":
            frames = self._decode(record, None)
            return torch.stack(spatial_views(frames, c.input_size, c.short_side_size, 1))
        info = probe(record, self.config.min_frames)
        if c.sparse:
            clips = [sparse_test_ids(info.num_frames, c.clip_len, k, c.num_segments) for k in range(c.num_segments)]
            frames = torch.from_numpy(decode_frames(record, np.unique(np.concatenate(clips)), info))
            where = {int(f): n for n, f in enumerate(np.unique(np.concatenate(clips)))}
            windows = [frames[[where[int(f)] for f in ids]] for ids in clips]
        else:
            frames = torch.from_numpy(decode_frames(record, np.arange(0, info.num_frames, c.rate), info))
            windows = [frames[pos] for pos in temporal_windows(len(frames), c.clip_len, c.num_segments)]
        return torch.stack([v for w in windows for v in spatial_views(w, c.input_size, c.short_side_size,
                                                                        c.num_crops)])

    def load_batch(self, pairs: list[tuple[int, int]]):
        """Decode one batch; returns ``(video, labels, video_index, view_index, slots, failures)``."""
        failures: list[BadVideo] = []
        videos, labels, vids, views = [], [], [], []
        for slot, i in pairs:
            if self.mode == "train":
                v, label, used = self.train_views(slot, i, failures)
            else:
                try:
                    v, label, used = self.eval_views(i), self.records[i].label, i
                except BadVideo as bad:
                    failures.append(bad)
                    continue
            videos.append(v)
            labels += [label] * len(v)
            vids += [used] * len(v)
            views += list(range(len(v)))
        c = self.config
        video = torch.cat(videos) if videos else torch.empty(0, 3, c.clip_len, c.input_size, c.input_size)
        labels, vids, views = (torch.tensor(x, dtype=torch.int64) for x in (labels, vids, views))
        return video, labels, vids, views, [s for s, _ in pairs], failures


class ClassifyLoader:
    """Batches of labeled clips for one rank, one epoch at a time (:meth:`set_epoch`, :meth:`iterate`).

    Training shuffles per ``(seed, epoch)`` and keeps whole global batches (``batch_size`` x ``world_size`` x
    ``accum_steps`` videos, the tail dropped), so an epoch has the same steps on any number of ranks; val/test keep
    the list order and every video. Ranks take every ``world_size``-th position of the epoch order
    (:func:`~vmae2.data.lists.rank_slice`; val/test pad with repeats, which :func:`vmae2.metrics.merge_views`
    counts once).
    """

    def __init__(self, records: Sequence[VideoRecord] | MixedList, *, mode: str, batch_size: int,
                 config: ClassifyConfig,
                 seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 2, device="cpu",
                 transform: TrainTransform | None = None, quarantine=None, accum_steps: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size} must be >= 1")
        self.stream = records if isinstance(records, MixedList) else None  # a ShardList: its epoch order trains
        self.source = ClassifySource(list(records), mode, config, seed, transform)
        self.mode, self.batch_size, self.seed = mode, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.unit = batch_size * world_size * accum_steps if mode == "train" else None
        self.samples_per_epoch = len(self.source.records)
        self.device, self.num_workers = torch.device(device), num_workers
        self.ledger = BadFileLedger(quarantine)
        per_video = config.num_sample if mode == "train" else (1 if mode == "val" else config.views_per_video)
        self.telemetry = Telemetry(batch_size * per_video)
        self.epoch = 0
        self._pairs: tuple[int, np.ndarray] | None = None
        self._loader = None
        self._pending: list = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.source.set_epoch(epoch)

    def pairs(self, start: int = 0) -> list[tuple[int, int]]:
        """This rank's ``(slot, record_index)`` pairs of the epoch from global position ``start`` on (the global
        order is computed once per epoch)."""
        n = len(self.source.records)
        if self._pairs is None or self._pairs[0] != self.epoch:
            train = self.mode == "train"
            if train and self.stream is not None:
                order = self.stream.epoch_indices(self.epoch)
            else:
                order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if train else np.arange(n)
            self._pairs = (self.epoch, order)
        order = self._pairs[1]
        slots = rank_slice(n, self.rank, self.world_size, start=start, unit=self.unit, pad=self.mode != "train")
        return [(int(s), int(order[s])) for s in slots]

    def close(self) -> None:
        """Stop the worker processes (they are kept across epochs otherwise)."""
        self._loader = None

    def __len__(self) -> int:
        n = len(rank_slice(len(self.source.records), self.rank, self.world_size, unit=self.unit,
                           pad=self.mode != "train"))
        return n // self.batch_size if self.mode == "train" else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[LabeledBatch]:
        return self.iterate()

    def iterate(self, start_batch: int = 0) -> Iterator[LabeledBatch]:
        """This epoch's batches from ``start_batch`` on (a resumed run skips without decoding)."""
        b = self.batch_size
        pairs = self.pairs(start_batch * b * self.world_size)  # what the batches before consumed on every rank
        batches = [pairs[i:i + b] for i in range(0, (len(self) - start_batch) * b, b)]
        return self.telemetry.wrap(self._run(batches))

    def _run(self, batches) -> Iterator[LabeledBatch]:
        if not batches:
            return
        self._pending[:] = [(self.epoch, pairs) for pairs in batches]
        if self._loader is None:
            self._loader = batch_loader(self.source, self._pending, self.num_workers, self.device)
        for video, labels, vids, views, slots, failures in self._loader:
            for bad in failures:
                self.ledger.add(bad)
            if len(video) == 0:
                continue
            video, labels, vids, views = (x.to(self.device, non_blocking=True) for x in (video, labels, vids, views))
            yield LabeledBatch(video, labels, vids, views, slots)
