"""``python -m vmae2.data.make_lists DIR --out LISTS``: the lists of a folder of videos.

A folder of class folders (``DIR/<class>/<video>``, videos at any depth below the class folder) gives
``pretrain.txt`` (every video, ``path 0 -1``), ``train.csv`` and ``val.csv`` (``path label``, label = class id: a
seeded split of each class, ``--val_fraction`` of its videos, at least one, in ``val.csv``) and ``classes.txt``
(line ``i`` = class ``i``, class folders in sorted order). A flat folder (videos, no class folders) gives
``pretrain.txt`` only. Paths are absolute, so no ``--data_root`` is needed; columns are separated by blanks, or by
commas when a path holds a blank.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vmae2.cli import Command, check_fields, entry, opt
from vmae2.data.lists import VIDEO_EXTENSIONS


@dataclass
class MakeListsConfig:
    """The options of ``python -m vmae2.data.make_lists``."""

    dir: str | None = opt(None, "a folder of class folders of videos, or a flat folder of videos", positional="DIR")
    out: str | None = opt(None, "folder for the lists (created if needed)")
    val_fraction: float = opt(0.2, "share of each class in val.csv", "[0, 1)")
    seed: int = opt(0, "seed of the split")

    def validate(self):
        if self.dir is None or self.out is None:
            raise ValueError("give the folder and where the lists go: python -m vmae2.data.make_lists DIR --out LISTS")
        check_fields(self)
        return self


MAKE_LISTS = Command("python -m vmae2.data.make_lists", "The lists of a folder of videos: pretrain.txt (every video); "
                     "with one subfolder per class also train.csv, val.csv (a seeded split of each class) and "
                     "classes.txt. Absolute paths.", MakeListsConfig)


def _videos(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p.resolve() for p in found if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def scan(root: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """``({class name: its videos}, videos directly in root)``; raises ``ValueError`` for a folder it cannot use."""
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder; give a folder of videos, or of class folders of videos")
    classes = {d.name: v for d in sorted(root.iterdir()) if d.is_dir() and (v := _videos(d, recursive=True))}
    loose = _videos(root, recursive=False)
    if not classes and not loose:
        raise ValueError(f"no videos in {root} (looked for {' '.join(VIDEO_EXTENSIONS)} files, and in its "
                         f"subfolders); put the videos there, or in one subfolder per class")
    if classes and loose:
        raise ValueError(f"{root} holds both videos ({len(loose)}, e.g. {loose[0].name}) and class folders "
                         f"({', '.join(classes)}); move each video into its class folder, or the class folders away "
                         f"for a flat (pretraining-only) folder")
    return classes, loose


def split(videos: list[Path], val_fraction: float, rng: np.random.Generator) -> tuple[list[Path], list[Path]]:
    """``(train, val)`` of one class: a seeded shuffle, ``round(n * val_fraction)`` videos (at least one when the
    fraction is > 0 and the class has two) to val, the others to train, each in path order."""
    n = len(videos)
    n_val = 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, round(n * val_fraction)))
    order = rng.permutation(n)
    return sorted(videos[i] for i in order[n_val:]), sorted(videos[i] for i in order[:n_val])


def write_lists(root, out, val_fraction: float = 0.2, seed: int = 0) -> dict[str, Path]:
    """Write the lists of ``root`` into ``out`` (module docstring); returns ``{name: path}`` of what was written."""
    root, out = Path(root), Path(out)
    classes, loose = scan(root)
    out.mkdir(parents=True, exist_ok=True)
    everything = loose or [v for videos in classes.values() for v in videos]
    sep = "," if any(" " in str(v) or "," in str(v) for v in everything) else " "
    written = {"pretrain": out / "pretrain.txt"}
    written["pretrain"].write_text("".join(f"{v}{sep}0{sep}-1\n" for v in everything))
    if not classes:
        return written
    rng = np.random.default_rng(seed)
    rows: dict[str, list[str]] = {"train": [], "val": []}
    for label, videos in enumerate(classes.values()):
        for name, part in zip(("train", "val"), split(videos, val_fraction, rng)):
            rows[name] += [f"{v}{sep}{label}\n" for v in part]
    for name, lines in rows.items():
        if lines:
            written[name] = out / f"{name}.csv"
            written[name].write_text("".join(lines))
    written["classes"] = out / "classes.txt"
    written["classes"].write_text("".join(f"{c}\n" for c in classes))
    return written


def run(cfg: MakeListsConfig) -> int:
    """Write the lists and say what was written; exit code 0, or 2 for a folder it cannot use."""
    try:
        written = write_lists(cfg.dir, cfg.out, cfg.val_fraction, cfg.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written.values():
        print(f"{path}  {len(path.read_text().splitlines())} lines")
    if "classes" not in written:
        print("no class folders: pretraining list only (put videos in one subfolder per class for fine-tuning lists)")
    return 0


main = entry(MAKE_LISTS, "vmae2.data.make_lists:run")


if __name__ == "__main__":
    raise SystemExit(main())
