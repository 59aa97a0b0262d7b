"""Clips/s of the pretraining loader reading a list of video files against the same videos packed into tar shards
(``vmae2.data.make_shards``): ``python -m benchmarks.shard_loader [--videos 24] [--rounds 3] [--out FILE]``.

The same generated videos, the same decode and augmentation (``PretrainLoader``, torch backend, single process);
only where the bytes come from differs: one file per video, or a byte range of a shard. Epochs alternate between
the two arms, ``--rounds`` times, so a change of machine load hits both alike; each arm's clips/s is the median
over rounds. ``--out`` writes the numbers with the command and the machine as JSON.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.profile_step import machine


def _epoch(loader) -> tuple[int, float]:
    loader.set_epoch(0)
    start = time.perf_counter()
    clips = sum(batch.video.shape[0] for batch in loader.iterate(0))
    return clips, time.perf_counter() - start


def run(videos: int, rounds: int, size: tuple[int, int], frames: int, workdir: Path) -> dict:
    from vmae2.data.pretraining.clips import ClipConfig
    from vmae2.data.lists import read_list
    from vmae2.data.pretraining.loader import PretrainLoader
    from vmae2.data.make_shards import make_shards
    from vmae2.data.shards import ShardList
    from vmae2.data.synthetic import make_videos

    make_videos(workdir / "v", videos, seed=0, sizes=(size,), num_frames=(frames,), codecs=("h264",))
    listing = workdir / "v" / "train.csv"
    index = make_shards(str(listing), workdir / "s", shard_bytes=4 << 20)
    clip = ClipConfig(clip_len=16, input_size=112, num_sample=1)
    arms = {"list": PretrainLoader(read_list(listing, kind="pretrain"), batch_size=4, config=clip, backend="torch",
                                   num_workers=0),
            "shards": PretrainLoader(ShardList.open(str(workdir / "s")), batch_size=4, config=clip,
                                     backend="torch", num_workers=0)}
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(rounds):
        for name, loader in arms.items():
            clips, seconds = _epoch(loader)
            times[name].append(clips / seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [s / li for s, li in zip(times["shards"], times["list"])]
    return {"clips_per_s": med, "rounds": times, "shards_vs_list": med["shards"] / med["list"],
            "ratio_per_round": ratios,
            "videos": videos, "shards": len(index["shards"]), "size": list(size), "frames": frames}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.shard_loader", description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=24)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of the generated videos")
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--note", default="", help="said with the machine (e.g. other work running)")
    p.add_argument("--out", help="a JSON file for the results")
    args = p.parse_args(argv)
    w, h = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.videos, args.rounds, (w, h), args.frames, Path(tmp))
    argv = sys.argv[1:] if argv is None else argv
    result.update(command=shlex.join(["python", "-m", "benchmarks.shard_loader", *argv]),
                  machine={**machine(), "note": args.note}, date=time.strftime("%Y-%m-%d"))
    med = result["clips_per_s"]
    print(f"list {med['list']:.1f} clips/s, shards {med['shards']:.1f} clips/s ({result['shards_vs_list']:.2f}x); "
          f"{args.videos} videos in {result['shards']} shards, {args.rounds} alternated rounds; shards/list per round "
          f"{min(result['ratio_per_round']):.2f}-{max(result['ratio_per_round']):.2f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
