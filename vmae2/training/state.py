"""The training state on disk: step checkpoints (``checkpoints/checkpoint-*.pt``, atomic, the last few kept),
every RNG state in them, and the output folder's room for them. Weights files are :mod:`vmae2.weights`."""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from vmae2.weights import atomic_write

CHECKPOINT_GLOB = "checkpoint-*.pt"


def rng_state() -> dict:
    """Every RNG state in plain containers and tensors (so ``torch.load(weights_only=True)`` reads it)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoints:
    """``DIR/checkpoints/checkpoint-{step:08d}.pt``: written atomically (:func:`vmae2.weights.atomic_write`), the
    last ``keep`` kept. A failed write (full disk, crash) leaves the previous one intact."""

    def __init__(self, output_dir: str | os.PathLike, keep: int):
        self.dir = Path(output_dir) / "checkpoints"
        self.keep = keep

    def paths(self) -> list[Path]:
        return sorted(self.dir.glob(CHECKPOINT_GLOB)) if self.dir.is_dir() else []

    def latest(self) -> Path | None:
        paths = self.paths()
        return paths[-1] if paths else None

    def save(self, state: dict, step: int) -> Path:
        path = atomic_write(self.dir / f"checkpoint-{step:08d}.pt", lambda tmp: torch.save(state, tmp))
        for old in self.paths()[:-self.keep]:
            old.unlink(missing_ok=True)
        return path

    @staticmethod
    def load(path: str | os.PathLike) -> dict:
        return torch.load(path, map_location="cpu", weights_only=True)


def check_output_dir(output_dir: str | os.PathLike, needed_bytes: int) -> None:
    """Fail before training when the output folder is not writable or the disk cannot hold two checkpoints."""
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"--output_dir {output_dir} is not writable ({exc}); choose another folder") from exc
    free = shutil.disk_usage(path).free
    if free < 2 * needed_bytes:
        raise ValueError(f"--output_dir {output_dir} has {free / 2**30:.2f} GiB free; checkpoints need about "
                         f"{needed_bytes / 2**30:.2f} GiB each and two must fit. Free space or choose another folder")


def optimizer_keys(saved: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, by_name: bool) -> dict:
    """A saved optimizer state keyed the way this run loads it: by parameter name (``by_name``: FSDP2's full state
    dict, :func:`torch.distributed.checkpoint.state_dict.get_state_dict`) or by position in the optimizer's groups
    (``Optimizer.state_dict``: single process, DDP). A checkpoint of either kind thus loads under the other."""
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    keys = [k for g in saved["param_groups"] for k in g["params"]]
    if not keys or isinstance(keys[0], str) == by_name:
        return saved
    index = {name: i for i, name in enumerate(order)}
    if by_name:
        if len(keys) != len(order):
            raise ValueError(f"the checkpoint's optimizer holds {len(keys)} parameters, this model {len(order)}")
        rename = dict(zip(keys, order))  # positions follow the groups' order in both
    else:
        missing = [k for k in keys if k not in index]
        if missing:
            raise ValueError(f"the checkpoint's optimizer names parameters this model lacks: {missing[:4]}")
        rename = index
    return {"state": {rename[k]: v for k, v in saved["state"].items()},
            "param_groups": [{**g, "params": [rename[k] for k in g["params"]]} for g in saved["param_groups"]]}
