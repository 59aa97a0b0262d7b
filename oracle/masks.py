"""The official mask generators re-typed in numpy (reference sections 1.2, 1.3) and the engine's batching.

A generator returns one sample's float64 map ``(T', H'W')``, 1 = masked. Called plainly it draws from the global
``np.random`` as the official ``__call__`` does; :meth:`TubeGenerator.shuffled_frame` / :meth:`RunningCellGenerator.row`
take the draw injected instead.
"""
from __future__ import annotations

import numpy as np
import torch


class TubeGenerator:
    """Official tube masking: one shuffled frame vector, ``int(ratio * H'W')`` ones, tiled over ``T'``."""

    def __init__(self, grid, ratio: float):
        self.frames, h, w = grid
        self.num_patches_per_frame = h * w
        self.num_masks_per_frame = int(ratio * h * w)

    def unshuffled_frame(self) -> np.ndarray:
        return np.hstack([np.zeros(self.num_patches_per_frame - self.num_masks_per_frame),
                          np.ones(self.num_masks_per_frame)])

    def shuffled_frame(self, rng) -> np.ndarray:
        """The frame vector shuffled in place by ``rng`` (a ``np.random.Generator`` or ``np.random`` itself)."""
        v = self.unshuffled_frame()
        rng.shuffle(v)
        return v

    def from_frame(self, frame_vector: np.ndarray) -> np.ndarray:
        """The generator's output once the per-sample shuffled frame vector is injected."""
        frame_vector = np.asarray(frame_vector, dtype=np.float64)
        assert frame_vector.shape == (self.num_patches_per_frame,)
        return np.tile(frame_vector, (self.frames, 1))

    def __call__(self) -> np.ndarray:
        """The official call: a fresh shuffle from the global ``np.random``."""
        return self.from_frame(self.shuffled_frame(np.random))


class _Cell:
    def __init__(self, num_masks: int, num_patches: int = 4):
        self.num_masks = num_masks
        self.size = num_patches
        self.queue = np.hstack([np.ones(num_masks), np.zeros(num_patches - num_masks)])
        self.ptr = 0

    def set_ptr(self, pos: int):
        self.ptr = pos

    def get_cell(self) -> np.ndarray:
        return self.queue[(np.arange(self.size) + self.ptr) % self.size]

    def run_cell(self):
        self.ptr += 1


class RunningCellGenerator:
    """Official running-cell decoder masking, pre-computed by the literal ptr/queue procedure.

    ``all_mask_maps`` ``(4, T', H'W')``: map ``p``, frame ``t``, cell slot ``j`` (row-major 2x2) is masked iff
    ``(j + p + t + 1) % 4 < int(4 * ratio)``.
    """

    def __init__(self, grid, ratio: float):
        self.frames, self.height, self.width = grid
        num_masks_per_cell = int(4 * ratio)
        assert 0 < num_masks_per_cell < 4
        self.cell = _Cell(num_masks_per_cell, 4)
        maps = []
        for ptr_pos in range(4):
            self.cell.set_ptr(ptr_pos)
            per_frame = []
            for _ in range(self.frames):
                self.cell.run_cell()
                unit = self.cell.get_cell().reshape(2, 2)
                per_frame.append(np.tile(unit, [self.height // 2, self.width // 2]).flatten())
            maps.append(np.stack(per_frame, axis=0))
        self.all_mask_maps = np.stack(maps, axis=0)  # (4, T', H'W') float64

    def row(self, index: int) -> np.ndarray:
        """``__call__`` with the random row index injected."""
        return self.all_mask_maps[index].copy()

    def __call__(self) -> np.ndarray:
        """The official call: a row drawn from the global ``np.random``."""
        return self.row(np.random.randint(4))


def batch_masks(maps, device=None) -> torch.Tensor:
    """The engine's masks ``[B, N]`` bool from per-sample ``(T', H'W')`` maps: ``default_collate`` (a tensor per
    sample, stacked), then ``.to(device, non_blocking=True).flatten(1).to(torch.bool)``."""
    return torch.stack([torch.as_tensor(m) for m in maps]).to(device, non_blocking=True).flatten(1).to(torch.bool)


def visible_ids(mask: torch.Tensor) -> torch.Tensor:
    """Ascending indices of the ``False`` entries of each row (equal count per row), ``[B, K]`` int64."""
    b = mask.shape[0]
    rows, cols = torch.nonzero(~mask, as_tuple=True)
    assert torch.equal(rows, torch.arange(b).repeat_interleave((~mask).sum(1)))
    return cols.reshape(b, -1)
