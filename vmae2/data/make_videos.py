"""Write a synthetic video set (and optionally broken files) from the command line.

    python -m vmae2.data.make_videos --out DIR --count N --seed S [--codecs h264 vp9] [--sizes 160x120]
        [--frames 48 96] [--fps 25] [--list_name train.csv] [--relative_paths] [--no_list] [--bad]
    python -m vmae2.data.make_videos --out DIR --count N --classes still right   (class folders, N clips each)

``--codecs``, ``--sizes``, ``--frames`` and ``--classes`` take one or more values, blank- or comma-separated. See :mod:`vmae2.data.synthetic` for what the clips contain and how they are
named.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import vmae2.cli
from vmae2.cli import Command, check_fields, entry, opt, refuse
from vmae2.data import synthetic

__all__ = ["MAKE_VIDEOS", "MakeVideosConfig", "build_parser", "main", "run"]

CODECS = tuple(c for c in synthetic.CODECS if c != "mpeg4")


@dataclass
class MakeVideosConfig:
    """The options of ``python -m vmae2.data.make_videos``."""

    out: str | None = opt(None, "output folder (created if needed)")
    count: int | None = opt(None, "number of clips (with --classes: clips per class), >= 0")
    seed: int = opt(0, "seed of the clips' content")
    start: int = opt(0, "index of the first clip")
    codecs: str = opt(" ".join(synthetic.DEFAULT_CODECS), f"codecs to cycle through, one or more of: "
                                                         f"{' '.join(CODECS)}", multi=True)
    sizes: str = opt(" ".join(f"{w}x{h}" for w, h in synthetic.DEFAULT_SIZES),
                     "frame sizes WxH to cycle through (width and height positive and even)", multi=True)
    frames: str = opt(" ".join(map(str, synthetic.DEFAULT_NUM_FRAMES)), "frame counts to cycle through", multi=True)
    fps: int = opt(25, "frames per second", ">= 1")
    list_name: str = opt("train.csv", "list file written next to the clips")
    relative_paths: bool = opt(False, "write list paths relative to --out (then use --out as the official "
                                      "--data_root)")
    no_list: bool = opt(False, "do not write the list file")
    bad: bool = opt(False, "also write broken inputs into OUT/bad/")
    classes: str | None = opt(None, f"write class folders OUT/<class>/ of --count motion clips each instead (first "
                                    f"--sizes, --frames and --codecs value; no list: python -m vmae2.data.make_lists "
                                    f"OUT makes them); one or more of: {' '.join(sorted(synthetic.MOTIONS))}", multi=True)

    def validate(self):
        if self.out is None or self.count is None:
            raise ValueError("give --out and --count: python -m vmae2.data.make_videos --out DIR --count N")
        if self.count < 0:
            refuse("count", self.count, "must be >= 0")
        check_fields(self)
        _choices("codecs", self.codecs, CODECS)
        _sizes(self.sizes)
        _frames(self.frames)
        if self.classes is not None:
            _choices("classes", self.classes, sorted(synthetic.MOTIONS))
        return self


MAKE_VIDEOS = Command("python -m vmae2.data.make_videos", __doc__.splitlines()[0] + " One or more values: "
                      "blank- or comma-separated (--codecs h264 vp9).", MakeVideosConfig)


def _values(text) -> list[str]:
    """The values of a multi-valued option: blank- or comma-separated text, or a list (from ``--config``)."""
    if isinstance(text, (list, tuple)):
        return [str(v) for v in text]
    return str(text).replace(",", " ").split()


def _choices(name: str, text, allowed) -> list[str]:
    values = _values(text)
    wrong = [v for v in values if v not in allowed]
    if wrong or not values:
        refuse(name, wrong[0] if wrong else text, f"choose one or more of {' '.join(allowed)}")
    return values


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        refuse("sizes", text, "expected WxH such as 160x120")
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        refuse("sizes", text, "width and height must be positive and even")
    return w, h


def _sizes(text) -> list[tuple[int, int]]:
    sizes = [_size(v) for v in _values(text)]
    if not sizes:
        refuse("sizes", text, "give one or more sizes WxH such as 160x120")
    return sizes


def _frames(text) -> list[int]:
    values = _values(text)
    if not values or not all(v.isdigit() and int(v) >= 1 for v in values):
        refuse("frames", text, "give one or more frame counts, each a whole number >= 1")
    return [int(v) for v in values]


def build_parser():
    """The ``argparse`` parser of this command (:func:`vmae2.cli.build_parser` of :data:`MAKE_VIDEOS`)."""
    return vmae2.cli.build_parser(MAKE_VIDEOS)


def _write_class_folders(cfg: MakeVideosConfig, started: float) -> int:
    classes = _values(cfg.classes)
    paths = synthetic.make_class_folders(Path(cfg.out), classes, cfg.count, seed=cfg.seed, size=_sizes(cfg.sizes)[0],
                                         num_frames=_frames(cfg.frames)[0], codec=_values(cfg.codecs)[0],
                                         fps=cfg.fps)
    print(f"wrote {len(paths)} clips in {len(classes)} class folders of {Path(cfg.out)} in "
          f"{time.perf_counter() - started:.1f} s")
    return 0


def run(cfg: MakeVideosConfig) -> int:
    """Write the clips (or the class folders) and say what was written; exit code 0."""
    started = time.perf_counter()
    if cfg.classes:
        return _write_class_folders(cfg, started)
    out, codecs, sizes, frames = Path(cfg.out), _values(cfg.codecs), _sizes(cfg.sizes), _frames(cfg.frames)
    paths = synthetic.make_videos(out, cfg.count, seed=cfg.seed, codecs=codecs, sizes=sizes, num_frames=frames,
                                  fps=cfg.fps, start=cfg.start, write_list=not cfg.no_list, list_name=cfg.list_name,
                                  list_paths="relative" if cfg.relative_paths else "absolute")
    for i, path in enumerate(paths, start=cfg.start):
        codec, (w, h), t = synthetic.clip_plan(i, codecs, sizes, frames)
        print(f"{path}  {codec} {w}x{h} {t} frames  {path.stat().st_size} bytes")
    if not cfg.no_list:
        print(f"{out / cfg.list_name}  list of {len(paths)} clips ('path 0 -1' lines)")
    if cfg.bad:
        for reason, path in synthetic.make_bad_files(out / "bad", seed=cfg.seed).items():
            state = f"{path.stat().st_size} bytes" if path.exists() else "not created"
            print(f"{path}  bad: {reason} ({state})")
    print(f"wrote {len(paths)} clips in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


main = entry(MAKE_VIDEOS, "vmae2.data.make_videos:run")


if __name__ == "__main__":
    sys.exit(main())
