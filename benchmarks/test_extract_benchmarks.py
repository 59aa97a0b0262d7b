"""Feature extraction throughput: windows/s of the arms of ``extract_arms.py`` (the official per-window procedure,
vmae2 at fp32, vmae2 at bf16) on one workload, each arm once after a warm-up, one after the other; the ratios to the
official arm and the official arm's split (decode / transform / model) are printed and stored in ``extra_info``.
Sequential arms see every change of machine load; ``python -m benchmarks.extract_arms`` alternates them.

``VMAE2_BENCH_EXTRACT_VIDEOS`` (default 2) videos of ``VMAE2_BENCH_EXTRACT_SIZE`` (default 320x240) with a keyframe
every ``VMAE2_BENCH_EXTRACT_GOP`` frames (default 25, one a second).
"""
import os
import time

import pytest

pytest.importorskip("av")

from benchmarks.extract_arms import count_windows, cpu_bf16_units, make_arms, make_videos  # noqa: E402
from oracle.extract import frame_count, official_starts, official_transform, read_window  # noqa: E402

NUM_VIDEOS = int(os.environ.get("VMAE2_BENCH_EXTRACT_VIDEOS", "2"))
WIDTH, HEIGHT = (int(v) for v in os.environ.get("VMAE2_BENCH_EXTRACT_SIZE", "320x240").split("x"))
GOP = int(os.environ.get("VMAE2_BENCH_EXTRACT_GOP", "25"))
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    videos = make_videos(tmp_path_factory.mktemp("extract_videos"), NUM_VIDEOS, WIDTH, HEIGHT, GOP)
    return videos, make_arms(), count_windows(videos)


def _run(benchmark, setup, name):
    """Warm up, time the arm once over every video, record its windows/s (and its ratio to the official arm)."""
    videos, arms, windows = setup
    arms[name](videos[0])
    benchmark.pedantic(lambda: [arms[name](v) for v in videos], rounds=1, iterations=1)
    rate = windows / benchmark.stats.stats.median
    RESULTS[name] = rate
    benchmark.extra_info.update({"arm": name, "windows": windows, "windows_per_s": round(rate, 2),
                                 "is_baseline": name == "official", "video": f"{WIDTH}x{HEIGHT} gop {GOP}",
                                 "cpu_bf16_units": cpu_bf16_units()})
    if name != "official" and "official" in RESULTS:
        ratio = rate / RESULTS["official"]
        benchmark.extra_info["speedup_vs_official"] = round(ratio, 2)
        print(f"\nextract windows/s: {name} {rate:.2f}, official-style {RESULTS['official']:.2f}: {ratio:.2f}x")


def _decode_and_transform_s(videos) -> tuple[float, float]:
    """The official arm's decode and transform alone, window by window (the model is the rest of its time)."""
    decode = transform = 0.0
    for video in videos:
        for start in official_starts(frame_count(video), 4):
            t0 = time.perf_counter()
            frames = read_window(video, start)
            t1 = time.perf_counter()
            official_transform(frames)
            decode, transform = decode + t1 - t0, transform + time.perf_counter() - t1
    return decode, transform


@pytest.mark.benchmark(group="extract-cpu")
def test_official_style_extraction(benchmark, setup):
    _run(benchmark, setup, "official")
    decode, transform = _decode_and_transform_s(setup[0])
    total = benchmark.stats.stats.median
    benchmark.extra_info.update({"decode_s": round(decode, 2), "transform_s": round(transform, 2),
                                 "model_s": round(total - decode - transform, 2)})
    print(f"\nofficial-style split: decode {decode:.1f} s, transform {transform:.1f} s, model "
          f"{total - decode - transform:.1f} s of {total:.1f} s")


@pytest.mark.benchmark(group="extract-cpu")
def test_vmae2_extraction(benchmark, setup):
    _run(benchmark, setup, "vmae2")


@pytest.mark.benchmark(group="extract-cpu")
def test_vmae2_extraction_bf16(benchmark, setup):
    _run(benchmark, setup, "vmae2_bf16")
