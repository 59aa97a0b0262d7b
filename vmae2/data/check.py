"""``python -m vmae2.data.check LIST``: validate a data list before training.

Each entry is probed and fully decoded with PyAV (every frame, so truncated files are caught); the table shows
frames, fps, resolution, codec and the verdict. The length rule is the loaders' (see :mod:`vmae2.data.decode`):
fewer than ``--num_frames`` decodable frames is bad (``too_short``); fewer than ``--num_frames x --sampling_rate``
is counted as ``short (frames repeat)`` but not bad. Bad paths go to ``--bad-out`` (``path<TAB>reason<TAB>detail``).
Exit status: 0 when every entry is good, 1 when any is bad, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from vmae2.data.decode import BadVideo, VideoInfo, decode_frames, probe
from vmae2.data.lists import VideoRecord, read_list


@dataclass
class Verdict:
    record: VideoRecord
    info: VideoInfo | None
    bad: BadVideo | None


def check_record(record: VideoRecord, min_frames: int = 16, codecs=None) -> Verdict:
    """Probe, then decode every frame (the count a loader may sample from)."""
    try:
        info = probe(record, min_frames, codecs)
        decode_frames(record, range(info.num_frames), info)
        return Verdict(record, info, None)
    except BadVideo as bad:
        return Verdict(record, None, bad)


def check_records(records: list[VideoRecord], min_frames: int = 16, codecs=None, workers: int = 4) -> list[Verdict]:
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(lambda r: check_record(r, min_frames, codecs), records))


def format_table(verdicts: list[Verdict], span: int = 0) -> str:
    """One row per entry; a good file with fewer than ``span`` frames (the clip's frames x sampling rate) is
    marked ``short (frames repeat)``."""
    rows = [("path", "frames", "fps", "size", "codec", "status")]
    for v in verdicts:
        if v.bad:
            rows.append((v.record.path, "-", "-", "-", "-", f"BAD {v.bad.reason}: {v.bad.detail}"))
        else:
            i = v.info
            status = "short (frames repeat)" if i.num_frames < span else "ok"
            rows.append((v.record.path, str(i.num_frames), f"{i.fps:.2f}", f"{i.width}x{i.height}", i.codec, status))
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    return "\n".join("  ".join(r[c].ljust(widths[c]) for c in range(5)) + "  " + r[5] for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmae2.data.check", description=__doc__.splitlines()[0])
    parser.add_argument("list", help="a pretraining list (path start total) or a fine-tuning CSV (path label)")
    parser.add_argument("--data_root", default="", help="prefix for relative paths in the list")
    parser.add_argument("--kind", default="auto", choices=["auto", "pretrain", "video", "rawframes"])
    parser.add_argument("--num_frames", type=int, default=16, help="frames per clip (official: 16)")
    parser.add_argument("--sampling_rate", type=int, default=4, help="temporal stride (official: 4)")
    parser.add_argument("--min_frames", type=int, default=None,
                        help="fewer decodable frames is 'too_short' (default: --num_frames)")
    parser.add_argument("--codecs", default=None,
                        help="comma-separated allowed codecs, e.g. h264,vp9 (default: any PyAV decodes)")
    parser.add_argument("--bad-out", default=None, help="file for the bad paths (default: LIST.bad.txt)")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    try:
        records = read_list(args.list, kind=args.kind, data_root=args.data_root)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name in ("num_frames", "sampling_rate", "min_frames", "workers"):
        if (getattr(args, name) or 1) < 1:
            parser.error(f"--{name} {getattr(args, name)} must be >= 1")
    codecs = frozenset(args.codecs.split(",")) if args.codecs else None
    min_frames = args.min_frames or args.num_frames
    span = args.num_frames * args.sampling_rate
    verdicts = check_records(records, min_frames, codecs, args.workers)
    print(format_table(verdicts, span))
    bad = [v for v in verdicts if v.bad]
    short = sum(1 for v in verdicts if not v.bad and v.info.num_frames < span)
    out = args.bad_out or f"{args.list}.bad.txt"
    with open(out, "w") as f:
        for v in bad:
            f.write(f"{v.record.path}\t{v.bad.reason}\t{v.bad.detail}\n")
    print(f"\n{len(verdicts) - len(bad)} good, {len(bad)} bad" + (f"; bad paths written to {out}" if bad else ""))
    print(f"rule: fewer than {min_frames} frames is too_short (bad); {short} good file(s) have fewer than "
          f"{args.num_frames} x {args.sampling_rate} = {span} frames: short (frames repeat)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
