"""Feature extraction arms on one workload, for ``test_extract_benchmarks.py`` and for an alternated run:
``python -m benchmarks.extract_arms [--rounds 3] [--size 320x240] [--gop 25] [--videos 2] [--out FILE]``.

Workload: THUMOS14 windows (16 consecutive frames, a window every 4) at 224 px, ``vit_tiny_patch16_224`` (the
vmae2-only ViT-Ti: the smallest model, where the procedure matters most), generated H.264 videos of 300 frames.
Arms, same videos and weights:

- ``official``: the official ``extract_tad_feature.py`` procedure (``oracle/extract.py``: random-access
  decode of each window's 16 frames, its own transform, batch 1, fp32, the official explicit-softmax attention);
- ``vmae2``: ``vmae2.features.extract`` at fp32 (the procedure alone: same precision and bits as the official arm);
- ``vmae2_bf16``: the same with ``precision="bf16"`` (bf16 autocast: on a CPU with bf16 matrix units, AMX, the
  model's matmuls run on them; :func:`cpu_bf16_units` says whether this CPU has them).

The alternated run times every arm on every video in turn, ``--rounds`` times, so a change of machine load hits every
arm alike, and prints each arm's windows/s (median over rounds) and the per-round ratios to the official arm;
``--out`` also writes them, with the command and the machine, as JSON.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

from oracle.extract import frame_count, official_extract, official_starts
from vmae2.attention import set_backend
from vmae2.data.synthetic import encode_clip, render_clip
from vmae2.features import extract
from vmae2.models import create_model

STRIDE = 4  # THUMOS14
BATCH = 8


def cpu_bf16_units() -> bool:
    """Whether this CPU has AMX bf16 tiles (Linux ``/proc/cpuinfo``; False where it cannot be read)."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def make_videos(root: Path, count: int, width: int, height: int, gop: int) -> list[Path]:
    return [encode_clip(render_clip(0, i, width, height, 300), root / f"clip{i}.mp4", gop=gop) for i in range(count)]


def make_arms() -> dict[str, Callable[[Path], object]]:
    """Each arm extracts one video's THUMOS14 features; the arms share one set of weights."""
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", num_classes=0).eval()
    official = copy.deepcopy(model)
    set_backend(official, "math")  # the official Attention: explicit softmax
    return {"official": lambda v: official_extract(official, v, step=STRIDE),
            "vmae2": lambda v: extract(model, v, stride=STRIDE, batch_size=BATCH),
            "vmae2_bf16": lambda v: extract(model, v, stride=STRIDE, batch_size=BATCH, precision="bf16")}


def count_windows(videos) -> int:
    return sum(len(official_starts(frame_count(v), STRIDE)) for v in videos)


def main(argv: list[str] | None = None) -> int:
    import datetime
    import json

    from benchmarks.profile_step import alternated_times, machine

    p = argparse.ArgumentParser(prog="python -m benchmarks.extract_arms", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", default="320x240", help="source videos, WxH")
    p.add_argument("--gop", type=int, default=25, help="frames between keyframes")
    p.add_argument("--videos", type=int, default=2)
    p.add_argument("--out", metavar="FILE", help="write the results as JSON")
    args = p.parse_args(argv)
    command = "python -m benchmarks.extract_arms " + " ".join(sys.argv[1:] if argv is None else argv)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    width, height = (int(v) for v in args.size.split("x"))
    arms = make_arms()
    with tempfile.TemporaryDirectory() as tmp:
        videos = make_videos(Path(tmp), args.videos, width, height, args.gop)
        windows = count_windows(videos)
        for run in arms.values():
            run(videos[0])  # warm-up
        times = alternated_times({arm: (lambda run=run: [run(v) for v in videos]) for arm, run in arms.items()},
                                 args.rounds)
    print(f"{args.videos} videos {args.size} GOP {args.gop}, {windows} windows, {torch.get_num_threads()} threads, "
          f"AMX bf16: {cpu_bf16_units()}, {args.rounds} alternated rounds")
    results = {"command": command, "date": date, "machine": machine(), "amx_bf16": cpu_bf16_units(),
               "workload": {"videos": args.videos, "size": args.size, "gop": args.gop, "windows": windows}, "arms": {}}
    for arm, secs in times.items():
        rates = [windows / s for s in secs]
        line = f"{arm:11s} {statistics.median(rates):6.2f} windows/s (range {min(rates):.2f}-{max(rates):.2f})"
        results["arms"][arm] = {"windows_per_s": rates, "median_windows_per_s": statistics.median(rates)}
        if arm != "official":
            ratios = sorted(o / s for o, s in zip(times["official"], secs))
            line += f"  vs official: median {statistics.median(ratios):.2f}x, range {ratios[0]:.2f}-{ratios[-1]:.2f}x"
            results["arms"][arm]["ratio_vs_official"] = ratios
        print(line)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
