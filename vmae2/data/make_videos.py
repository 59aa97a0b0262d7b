"""Write a synthetic video set (and optionally broken files) from the command line.

    python -m vmae2.data.make_videos --out DIR --count N --seed S [--codecs h264 vp9] [--sizes 160x120]
        [--frames 48 96] [--fps 25] [--list-name train.csv] [--relative-paths] [--no-list] [--bad]
    python -m vmae2.data.make_videos --out DIR --count N --classes still right   (class folders, N clips each)

See :mod:`vmae2.data.synthetic` for what the clips contain and how they are named.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vmae2.data import synthetic


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 160x120, got {text!r}") from None
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"width and height must be positive and even, got {text!r}")
    return w, h


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vmae2.data.make_videos", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="output folder (created if needed)")
    p.add_argument("--count", required=True, type=int, help="number of clips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="index of the first clip (default 0)")
    p.add_argument("--codecs", nargs="+", default=list(synthetic.DEFAULT_CODECS),
                   choices=[c for c in synthetic.CODECS if c != "mpeg4"])
    p.add_argument("--sizes", nargs="+", type=_size, default=list(synthetic.DEFAULT_SIZES), metavar="WxH")
    p.add_argument("--frames", nargs="+", type=int, default=list(synthetic.DEFAULT_NUM_FRAMES),
                   help="frame counts to cycle through")
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--list-name", default="train.csv", help="list file written next to the clips")
    p.add_argument("--relative-paths", action="store_true",
                   help="write list paths relative to --out (then use --out as the official --data_root)")
    p.add_argument("--no-list", action="store_true", help="do not write the list file")
    p.add_argument("--bad", action="store_true", help="also write broken inputs into OUT/bad/")
    p.add_argument("--classes", nargs="+", choices=sorted(synthetic.MOTIONS), default=None,
                   help="write class folders OUT/<class>/ of --count motion clips each instead (first --sizes, "
                        "--frames and --codecs value; no list: python -m vmae2.data.make_lists OUT makes them)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.count < 0:
        print("--count must be >= 0", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if args.classes:
        paths = synthetic.make_class_folders(args.out, args.classes, args.count, seed=args.seed, size=args.sizes[0],
                                             num_frames=args.frames[0], codec=args.codecs[0], fps=args.fps)
        print(f"wrote {len(paths)} clips in {len(args.classes)} class folders of {args.out} in "
              f"{time.perf_counter() - t0:.1f} s")
        return 0
    paths = synthetic.make_videos(args.out, args.count, seed=args.seed, codecs=args.codecs, sizes=args.sizes,
                                  num_frames=args.frames, fps=args.fps, start=args.start,
                                  write_list=not args.no_list, list_name=args.list_name,
                                  list_paths="relative" if args.relative_paths else "absolute")
    for i, path in enumerate(paths, start=args.start):
        codec, (w, h), t = synthetic.clip_plan(i, args.codecs, args.sizes, args.frames)
        print(f"{path}  {codec} {w}x{h} {t} frames  {path.stat().st_size} bytes")
    if not args.no_list:
        print(f"{args.out / args.list_name}  list of {len(paths)} clips ('path 0 -1' lines)")
    if args.bad:
        for reason, path in synthetic.make_bad_files(args.out / "bad", seed=args.seed).items():
            state = f"{path.stat().st_size} bytes" if path.exists() else "not created"
            print(f"{path}  bad: {reason} ({state})")
    print(f"wrote {len(paths)} clips in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
