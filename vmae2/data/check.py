"""``python -m vmae2.data.check LIST``: validate a data list before training.

Each entry is probed and fully decoded with PyAV (every frame, so truncated files are caught); the table shows
frames, fps, resolution, codec and the verdict. The length rule is the loaders' (see :mod:`vmae2.data.decode`):
fewer than ``--num_frames`` decodable frames is bad (``too_short``); fewer than ``--num_frames x --sampling_rate``
is counted as ``short (frames repeat)`` but not bad. ``--preset`` takes both from a training preset; without it, from
the preset ``python -m vmae2.train --data_path LIST`` picks (``small_data``, 4 frames, for a small list without a
GPU). ``--class_names FILE`` reads labels that are class names. Bad paths go to ``--bad_out``
(``path<TAB>reason<TAB>detail``). Exit status: 0 when every entry is good, 1 when any is bad, 2 on a usage error.
"""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from vmae2.cli import Command, check_fields, count, entry, opt
from vmae2.data.decode import BadVideo, VideoInfo, decode_frames, probe
from vmae2.data.labels import LabelMap
from vmae2.data.lists import VideoRecord, read_list
from vmae2.finetune import FINETUNE_PRESETS
from vmae2.train import PRESETS


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


@dataclass
class CheckConfig:
    """List checking (``python -m vmae2.data.check``)."""

    data_path: str | None = opt(None, "a pretraining list (path start total) or a fine-tuning CSV (path label)",
                                positional="LIST")
    data_root: str = opt("", "prefix for relative paths in the list")
    kind: str = opt("auto", "list kind: auto (from its first line), pretrain, video or rawframes",
                    choices=("auto", "pretrain", "video", "rawframes"))
    class_names: str | None = opt(None, "class-name file (one name a line): labels of a fine-tuning list may be "
                                        "class names", path=True)
    num_frames: int = count(16, "frames per clip (official: 16)")
    sampling_rate: int = count(4, "temporal stride (official: 4)")
    min_frames: int | None = count(None, "fewer decodable frames is 'too_short' (default: --num_frames)")
    codecs: str | None = opt(None, "comma-separated allowed codecs, e.g. h264,vp9 (default: any PyAV decodes)")
    bad_out: str | None = opt(None, "file for the bad paths (default: LIST.bad.txt)")
    workers: int = count(4, "videos checked at once")

    def validate(self):
        return check_fields(self, required={"data_path": "LIST is required: python -m vmae2.data.check LIST"})


def clip_presets(*tables: dict) -> dict:
    """The clip (``num_frames``, ``sampling_rate``) of every training preset; a later table wins a shared name."""
    return {name: {k: v for k, v in values.items() if k in ("num_frames", "sampling_rate")}
            for table in tables for name, values in table.items()}


CHECK = Command("python -m vmae2.data.check", "Validate a data list before training: every video probed and fully "
                "decoded, a table of frames, fps, size, codec and verdict, the bad paths written to a file. "
                "Precedence: defaults < --preset < --config < flags.", CheckConfig,
                clip_presets(FINETUNE_PRESETS, PRESETS), "official_defaults",
                "the training preset whose clip (--num_frames, --sampling_rate) the videos must give: a pretraining "
                "preset (python -m vmae2.train; demo and small_data: 4 frames) or a fine-tune script "
                "(vit_*_k400, ...; fine-tuning's small_data clip is --num_frames 8 --sampling_rate 2)")


def run(cfg: CheckConfig) -> int:
    """Check every entry of ``cfg.data_path``; exit code 0 (all good), 1 (some bad) or 2 (unreadable list)."""
    try:
        names = list(LabelMap.read(cfg.class_names).names) if cfg.class_names else None
        records = read_list(cfg.data_path, kind=cfg.kind, data_root=cfg.data_root, class_names=names)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    codecs = frozenset(cfg.codecs.split(",")) if cfg.codecs else None
    min_frames = cfg.min_frames or cfg.num_frames
    span = cfg.num_frames * cfg.sampling_rate
    verdicts = check_records(records, min_frames, codecs, cfg.workers)
    print(format_table(verdicts, span))
    bad = [v for v in verdicts if v.bad]
    short = sum(1 for v in verdicts if not v.bad and v.info.num_frames < span)
    out = cfg.bad_out or f"{cfg.data_path}.bad.txt"
    with open(out, "w") as f:
        for v in bad:
            f.write(f"{v.record.path}\t{v.bad.reason}\t{v.bad.detail}\n")
    print(f"\n{len(verdicts) - len(bad)} good, {len(bad)} bad" + (f"; bad paths written to {out}" if bad else ""))
    print(f"rule: fewer than {min_frames} frames is too_short (bad); {short} good file(s) have fewer than "
          f"{cfg.num_frames} x {cfg.sampling_rate} = {span} frames: short (frames repeat)")
    return 1 if bad else 0


main = entry(CHECK, "vmae2.data.check:run")


if __name__ == "__main__":
    raise SystemExit(main())
