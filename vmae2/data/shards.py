"""Sharded video corpora: tar files in the WebDataset layout, read as one seeded stream.

Layout (written by ``python -m vmae2.data.make_shards``): ``DIR/shard-000000.tar ...``, each holding samples as
consecutive members that share a key: ``{key}.mp4`` (or the video's own extension: the encoded file, unchanged),
``{key}.cls`` (the class id as text, labeled lists only) and ``{key}.json`` (``{"path", "label", "index"}``: where
the video came from). ``DIR/index.json`` lists every shard with its samples' keys, labels and the byte range of each
video inside its tar, so that nothing has to be scanned; a tar without an index is scanned once.

A sample is a :class:`~vmae2.data.lists.VideoRecord` whose path names its byte range (``shard.tar#key.mp4@OFFSET+SIZE``,
:func:`~vmae2.data.decode.member_path`): the decoder reads that range, so the list loaders' decode, plans, seeds and
quarantine apply unchanged. :class:`ShardList` gives the epoch order of a stream: the shards in a seeded order per
epoch, their samples through a seeded shuffle buffer; the loaders split that order across ranks and batches across
workers (:func:`vmae2.data.lists.rank_slice`), so no sample is read twice, and it depends only on ``(seed, epoch)``:
a run resumes mid-epoch (on any number of ranks) with the samples it had not consumed.
"""
from __future__ import annotations

import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np

from vmae2.data.decode import member_path
from vmae2.data.lists import VIDEO_EXTENSIONS, MixedList, VideoRecord

__all__ = ["INDEX_FILE", "ShardList", "expand_braces", "is_shards", "read_index",
           "scan_tar", "shard_records"]

INDEX_FILE = "index.json"
INDEX_FORMAT = "vmae2-shards-1"
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """``shard-{000000..000002}.tar`` -> three names (zero padding kept); ``{a,b}`` alternatives; several groups
    expand as their product, left to right."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    body = m[1]
    if ".." in body:
        lo, hi = body.split("..", 1)
        if not (lo.isdigit() and hi.isdigit()):
            raise ValueError(f"the brace range {{{body}}} in {pattern!r} is not {{FIRST..LAST}} with two integers")
        width = len(lo) if lo.startswith("0") else 0
        items = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        items = body.split(",")
    head, tail = pattern[:m.start()], pattern[m.end():]
    return [out for item in items for out in expand_braces(head + item + tail)]


def is_shards(spec: str) -> bool:
    """Whether ``--data_path`` names shards: a folder holding ``index.json`` or ``*.tar``, a ``.tar`` file or a
    brace pattern of them."""
    path = Path(spec)
    if path.is_dir():
        return (path / INDEX_FILE).is_file() or any(path.glob("*.tar"))
    return spec.endswith(".tar") or ("{" in spec and spec.rstrip("}").endswith(".tar"))


def scan_tar(tar: str | os.PathLike) -> list[dict]:
    """The samples of one tar in the WebDataset layout: ``{key, name, offset, size, label, path}`` in member order
    (``label`` -1 without a ``.cls`` member; ``path`` the original from ``.json``, else the member name)."""
    samples: dict[str, dict] = {}
    with tarfile.open(tar, "r:") as t:
        for info in t:
            if not info.isfile():
                continue
            key, _, ext = info.name.partition(".")
            sample = samples.setdefault(key, {"key": key, "label": -1, "path": None})
            if ("." + ext).lower() in VIDEO_EXTENSIONS:
                sample.update(name=info.name, offset=info.offset_data, size=info.size)
            elif ext == "cls":
                sample["label"] = int(t.extractfile(info).read().decode().strip())
            elif ext == "json":
                sample["path"] = json.loads(t.extractfile(info).read()).get("path")
    found = [s for s in samples.values() if "name" in s]
    for s in found:
        s["path"] = s["path"] or s["name"]
    return found


def read_index(folder: str | os.PathLike) -> dict | None:
    """``folder/index.json`` as written by ``make_shards``; None without one."""
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        return None
    index = json.loads(path.read_text())
    if index.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path} is not a vmae2 shard index (format {index.get('format')!r}, expected "
                         f"{INDEX_FORMAT!r}); rewrite it with python -m vmae2.data.make_shards")
    return index


def _tars(spec: str) -> list[Path]:
    path = Path(spec)
    if path.is_dir():
        index = read_index(path)
        return [path / s["name"] for s in index["shards"]] if index else sorted(path.glob("*.tar"))
    return [Path(p) for p in expand_braces(spec)]


def shard_records(spec: str, step: int = 4) -> list[list[VideoRecord]]:
    """The records of each shard that ``spec`` names (a folder, a ``.tar`` or a brace pattern), from the folder's
    ``index.json`` where there is one, else by scanning the tars. ``ValueError`` naming a missing shard."""
    tars = _tars(spec)
    missing = [str(t) for t in tars if not t.is_file()]
    if not tars or missing:
        raise ValueError(f"--data_path {spec}: {'no shard' if not tars else 'missing shards ' + ', '.join(missing[:3])}"
                         f"; write shards with python -m vmae2.data.make_shards LIST --out DIR")
    indexed = {}
    for folder in {t.parent for t in tars}:
        index = read_index(folder)
        indexed.update({str(folder / s["name"]): s["samples"] for s in (index["shards"] if index else [])})
    out = []
    for tar in tars:
        samples = indexed.get(str(tar))
        if samples is None:
            samples = scan_tar(tar)
        out.append([VideoRecord(member_path(str(tar), s["name"], s["offset"], s["size"]), 0, -1, s["label"], True,
                                "", step, s["path"]) for s in samples])
    return out


class ShardList(MixedList):
    """The samples of a sharded corpus as one stream per epoch, in :class:`MixedList`'s interface (``records``,
    ``num_samples``, :meth:`epoch_indices`), so the pretraining and fine-tuning loaders take it in place of a list.

    Epoch order: the shards in a seeded random order, their samples in stored order through a shuffle buffer of
    ``buffer`` samples (each arriving sample swaps with a seeded random slot, whose sample is emitted; the buffer
    drains at the end). It depends on ``(seed, epoch)`` only: every rank computes it from the index alone (no
    data read), and a resumed run continues it at the consumed position.
    """

    def __init__(self, shards: list[list[VideoRecord]], *, seed: int = 0, buffer: int = 1000):
        if not any(shards):
            raise ValueError("the shards hold no samples; check the folder or rewrite it with make_shards")
        super().__init__([(recs, 1.0) for recs in shards if recs], seed=seed)
        self.buffer = max(int(buffer), 1)

    @classmethod
    def open(cls, spec: str, *, seed: int = 0, buffer: int = 1000, step: int = 4) -> "ShardList":
        return cls(shard_records(spec, step), seed=seed, buffer=buffer)

    def epoch_indices(self, epoch: int, *, rank: int = 0, world_size: int = 1, drop_last: bool = False
                      ) -> np.ndarray:
        """Record indices (int64) of ``epoch``'s stream; only the whole order (rank 0 of 1) is defined here."""
        if world_size != 1:
            raise ValueError("ShardList orders whole epochs; the loaders split them (rank_slice)")
        rng = np.random.default_rng([self.seed, int(epoch), 0x5AD])
        stream = np.concatenate([np.arange(self.sizes[i]) + self.offsets[i] for i in rng.permutation(len(self.sizes))])
        return _shuffle_buffer(stream, self.buffer, rng)


def _shuffle_buffer(stream: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``stream`` through a shuffle buffer of ``size``: fill it, then each arriving item takes a random slot whose
    item is emitted; the rest is emitted in a random order."""
    size = min(size, len(stream))
    buf = stream[:size].copy()
    out = np.empty(len(stream), dtype=np.int64)
    slots = rng.integers(0, size, len(stream) - size)
    for n, (item, j) in enumerate(zip(stream[size:].tolist(), slots.tolist())):
        out[n] = buf[j]
        buf[j] = item
    out[len(stream) - size:] = rng.permutation(buf)
    return out
