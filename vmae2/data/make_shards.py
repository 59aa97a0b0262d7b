"""``python -m vmae2.data.make_shards LIST --out DIR``: pack the videos of a list into tar shards (WebDataset
layout, :mod:`vmae2.data.shards`) with an index, for reading as a stream (``--data_path DIR``).

Each sample is the video file unchanged (``{key}.mp4``), its class id (``{key}.cls``, labeled lists) and
``{key}.json`` (``path``, ``label``, ``index``: its line in the list). A shard closes before the sample that would take
it past ``--shard_bytes``. Samples keep the list's order; the loaders shuffle. Videos that cannot be read are left
out and listed; damaged ones that can be read are packed (the loaders quarantine them when they fail to decode).
"""
from __future__ import annotations

import io
import json
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from vmae2.cli import Command, check_fields, entry, opt
from vmae2.data.lists import read_paths
from vmae2.data.shards import INDEX_FILE, INDEX_FORMAT, scan_tar

__all__ = ["MAKE_SHARDS", "MakeShardsConfig", "make_shards", "main", "run"]


@dataclass
class MakeShardsConfig:
    """The options of ``python -m vmae2.data.make_shards``."""

    list: str | None = opt(None, "a list of videos (pretraining list, fine-tuning CSV, or one path a line)",
                           positional="LIST")
    out: str | None = opt(None, "output folder: shard-000000.tar ... and index.json")
    shard_bytes: float = opt(1e9, "largest shard size in bytes (default 1e9)", ">= 1")
    data_root: str = opt("", "folder the list's relative paths start from")

    def validate(self):
        if self.list is None or self.out is None:
            raise ValueError("give the list and where the shards go: python -m vmae2.data.make_shards LIST --out DIR")
        check_fields(self)
        return self


MAKE_SHARDS = Command("python -m vmae2.data.make_shards", __doc__.split("\n\n")[0], MakeShardsConfig)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: the same list gives the same bytes
    tar.addfile(info, io.BytesIO(data))


def _file_size(members: int) -> int:
    """A tar's size on disk from its members' blocks: two zero blocks end it, and it fills whole 10 KiB records."""
    return -(-(members + 1024) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _sample(i: int, record, data: bytes) -> list[tuple[str, bytes]]:
    key = f"{i:09d}"
    ext = Path(record.path).suffix.lower() or ".mp4"
    members = [(f"{key}{ext}", data)]
    if record.label >= 0:
        members.append((f"{key}.cls", str(record.label).encode()))
    meta = {"path": record.path, "label": record.label, "index": i}
    return members + [(f"{key}.json", json.dumps(meta).encode())]


def make_shards(list_path: str, out: str | Path, shard_bytes: int = 1 << 30, data_root: str = "",
                prefix: str = "shard") -> dict:
    """Write the shards and ``out/index.json``; returns the index (plus ``skipped``: ``[(path, reason)]``)."""
    if shard_bytes < 1:
        raise ValueError(f"--shard_bytes {shard_bytes} must be >= 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = read_paths(list_path, data_root)
    names, skipped, tar, size = [], [], None, 0
    for i, record in enumerate(records):
        try:
            data = Path(record.path).read_bytes()
        except OSError as exc:
            skipped.append((record.path, f"{type(exc).__name__}: {exc}"))
            continue
        members = _sample(i, record, data)
        need = sum(512 + -(-len(d) // 512) * 512 for _, d in members)  # header + data padded to 512-byte blocks
        if tar is None or (size and _file_size(size + need) > shard_bytes):
            if tar is not None:
                tar.close()
            names.append(f"{prefix}-{len(names):06d}.tar")
            tar, size = tarfile.open(out / names[-1], "w", format=tarfile.USTAR_FORMAT), 0
        for name, d in members:
            _add(tar, name, d)
        size += need
    if tar is not None:
        tar.close()
    shards = [{"name": n, "bytes": (out / n).stat().st_size, "samples": scan_tar(out / n)} for n in names]
    index = {"format": INDEX_FORMAT, "source": str(Path(list_path).resolve()),
             "samples": sum(len(s["samples"]) for s in shards), "shards": shards}
    (out / INDEX_FILE).write_text(json.dumps(index) + "\n")
    return {**index, "skipped": skipped}


def run(cfg: MakeShardsConfig) -> int:
    """Write the shards and say what was written; exit code 0, 1 when no video could be read, 2 for a list it
    cannot use."""
    try:
        index = make_shards(cfg.list, cfg.out, int(cfg.shard_bytes), cfg.data_root)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path, reason in index["skipped"]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    total = sum(s["bytes"] for s in index["shards"])
    print(f"{index['samples']} videos in {len(index['shards'])} shards ({total / 2**20:.1f} MiB) in {cfg.out}; "
          f"{len(index['skipped'])} skipped. Train on them with --data_path {cfg.out}", flush=True)
    return 0 if index["samples"] else 1


main = entry(MAKE_SHARDS, "vmae2.data.make_shards:run")


if __name__ == "__main__":
    raise SystemExit(main())
