"""Pretraining batches ``[B * num_sample, 3, T, S, S]`` float (ImageNet-normalised), from DALI or plain PyTorch.

Both backends run the same :class:`~vmae2.data.pretraining.clips.ClipSource` plans, so for one seed they deliver the
same frames and crops (up to decoder colour conversion and resize rounding). Views are ordered sample-major
(video0-view0..k-1, video1-view0.., ...) like the official collate.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from vmae2.data.pretraining.clips import Batch, ClipConfig, ClipSource
from vmae2.data.lists import MixedList, VideoRecord, rank_slice
from vmae2.data.telemetry import BadFileLedger, Telemetry
from vmae2_kernels import optional

BACKENDS = ("auto", "dali", "torch")


def dali_unavailable_reason() -> str | None:
    """Why the DALI backend cannot run here (None: it can); never raises."""
    if not optional.importable("nvidia.dali"):
        return f"nvidia-dali is not installed ({optional.hint('nvidia.dali')})"
    return optional.load("nvidia.dali")[1]


def dali_available() -> bool:
    return dali_unavailable_reason() is None


class EpochOrder:
    """``(slot, record_index)`` pairs of one rank: ``slot`` is the clip's position in the global epoch order (it
    seeds the clip's plan); the positions are :func:`~vmae2.data.lists.rank_slice` of the order, which ends at a
    multiple of ``unit`` (the global batch of a training run) or, with ``pad``, wraps to give every rank as many."""

    def __init__(self, mixed: MixedList, rank: int, world_size: int, unit: int | None = None, pad: bool = False):
        self.mixed, self.rank, self.world_size, self.unit, self.pad = mixed, rank, world_size, unit, pad
        self.epoch = 0
        self._cache: tuple[int, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def pairs(self, start: int = 0) -> list[tuple[int, int]]:
        """This rank's pairs from global position ``start`` on (a multiple of the world size)."""
        if self._cache is None or self._cache[0] != self.epoch:  # the global order: computed once per epoch
            self._cache = (self.epoch, self.mixed.epoch_indices(self.epoch))
        order = self._cache[1]
        slots = rank_slice(len(order), self.rank, self.world_size, start=start, unit=self.unit, pad=self.pad)
        return [(int(s), int(order[s])) for s in slots]

    def __len__(self) -> int:
        return len(rank_slice(self.mixed.num_samples, self.rank, self.world_size, unit=self.unit, pad=self.pad))

    def __iter__(self):
        return iter(self.pairs())


class _EpochBatches(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches (``(epoch, [(slot, record_index), ...])``), built by
    ``source.load_batch(pairs)``: each clip writes its views straight into the batch tensor, so no collate copy.
    Failures travel back with the batch."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source.records)

    def __getitem__(self, item):
        epoch, pairs = item
        self.source.set_epoch(epoch)  # workers hold their own copy of the source
        return self.source.load_batch(pairs)


def _as_is(batch):
    return batch


def batch_loader(source, pending: list, num_workers: int, device: torch.device) -> torch.utils.data.DataLoader:
    """A DataLoader whose items are ``source.load_batch(pairs)`` for the batches of ``pending`` (refilled before
    each epoch): one loader
    and one set of worker processes for the whole run. Worker seeds come from the loader's own generator, not
    the global RNG, so creating iterators never shifts the training randomness (resume stays exact)."""
    return torch.utils.data.DataLoader(_EpochBatches(source), sampler=_Pending(pending), batch_size=None, num_workers=num_workers,
                                       collate_fn=_as_is, pin_memory=device.type == "cuda",
                                       persistent_workers=num_workers > 0, generator=torch.Generator())


class _Pending:
    """Sampler over the list of batches the loader is about to deliver (set each epoch, read at iteration)."""

    def __init__(self, pending: list):
        self.pending = pending

    def __iter__(self):
        return iter(list(self.pending))

    def __len__(self) -> int:
        return len(self.pending)


class PretrainLoader:
    """Iterable over pretraining :class:`Batch` es for one epoch at a time; call :meth:`set_epoch` each epoch.

    Args:
        data: records, or a :class:`MixedList` (weighted hybrid lists).
        batch_size: videos per batch (each gives ``config.num_sample`` clips).
        backend: ``dali`` (needs nvidia-dali), ``torch`` (PyAV + PyTorch), or ``auto``: DALI for a CUDA
            ``device`` when installed, else ``torch`` (faster than DALI's CPU backend here; see benchmarks).
        device: where batches land (DALI decodes and augments there when it is a GPU).
        num_workers: PyTorch worker processes (torch backend) or DALI threads.
        quarantine: file that collects every bad path with its reason.
        accum_steps: micro-batches per optimizer step: an epoch is whole global batches (``batch_size`` x
            ``world_size`` x ``accum_steps`` videos, the order's tail dropped), the same steps for any world size.
    """

    def __init__(self, data: MixedList | Sequence[VideoRecord], *, batch_size: int, config: ClipConfig = ClipConfig(),
                 seed: int = 0, rank: int = 0, world_size: int = 1, backend: str = "auto", device="cpu",
                 num_workers: int = 2, quarantine=None, drop_last: bool = True, accum_steps: int = 1):
        if backend not in BACKENDS:
            raise ValueError(f"data backend {backend!r} is unknown; choose one of {BACKENDS}")
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size} must be >= 1")
        if backend == "dali" and not dali_available():
            raise RuntimeError(f"data backend 'dali' cannot run: {dali_unavailable_reason()}; use 'torch'")
        if backend == "auto":  # DALI where it decodes on the GPU; on a CPU the PyTorch path measured faster
            backend = "dali" if dali_available() and torch.device(device).type == "cuda" else "torch"
        self.backend = backend
        mixed = data if isinstance(data, MixedList) else MixedList([(list(data), 1.0)], seed=seed)
        self.source = ClipSource(mixed.records, config, seed)
        unit = batch_size * world_size * accum_steps if drop_last else None
        self.order = EpochOrder(mixed, rank, world_size, unit=unit, pad=not drop_last)
        self.batch_size, self.drop_last, self.world_size = batch_size, drop_last, world_size
        self.samples_per_epoch = mixed.num_samples
        self.device, self.num_workers = torch.device(device), num_workers
        self.ledger = BadFileLedger(quarantine)
        self.telemetry = Telemetry(batch_size * config.num_sample)
        self._dali = None
        self._torch_loader = None
        self._pending: list = []

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)
        self.source.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.order)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self, start_batch: int = 0) -> list[list[tuple[int, int]]]:
        """This epoch's batches from ``start_batch`` on: the rank's slice from the global position that the
        batches before it consumed on every rank."""
        b = self.batch_size
        pairs = self.order.pairs(start_batch * b * self.world_size)
        return [pairs[i:i + b] for i in range(0, (len(self) - start_batch) * b, b)]

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate()

    def iterate(self, start_batch: int = 0) -> Iterator[Batch]:
        """This epoch's batches from ``start_batch`` on (resuming mid-epoch skips without decoding)."""
        batches = self._batches(start_batch)
        batches = self._dali_batches(batches) if self.backend == "dali" else self._torch_batches(batches)
        return self.telemetry.wrap(batches)

    def _torch_batches(self, batches) -> Iterator[Batch]:
        if not batches:
            return
        self._pending[:] = [(self.source.epoch, pairs) for pairs in batches]
        if self._torch_loader is None:
            self._torch_loader = batch_loader(self.source, self._pending, self.num_workers, self.device)
        for video, slots, records, failures in self._torch_loader:
            for bad in failures:
                self.ledger.add(bad)
            yield Batch(video.to(self.device, non_blocking=True), slots, records)

    def _dali_batches(self, batches) -> Iterator[Batch]:
        from vmae2.data.pretraining.dali import DaliRunner

        if self._dali is None:
            self._dali = DaliRunner(self.source, self.batch_size, self.device, self.num_workers, self.ledger)
        yield from self._dali.run(batches)
