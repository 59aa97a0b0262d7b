"""Feature extraction throughput: windows/s of ``vmae2.features.extract`` against the official per-window procedure
(``tests/official_oracle/extract.py``: random-access decode of each window's 16 frames, its own transform, batch 1,
fp32, the official explicit-softmax attention), both in one run, on the same videos and weights.

Workload: THUMOS14 windows (16 consecutive frames, a window every 4) at 224 px, ``vit_tiny_patch16_224`` (the
vmae2-only ViT-Ti: the smallest model, where the procedure matters most), generated H.264 videos of 300 frames:
``VMAE2_BENCH_EXTRACT_VIDEOS`` (default 2) of ``VMAE2_BENCH_EXTRACT_SIZE`` (default 320x240) with a keyframe every
``VMAE2_BENCH_EXTRACT_GOP`` frames (default 25, one a second). Each arm runs once after a warm-up
on a short clip; the ratio and the official arm's split (decode / transform / model) are printed and stored in
``extra_info``.
"""
import copy
import os
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("av")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from official_oracle.extract import (frame_count, official_extract, official_starts, official_transform,  # noqa: E402
                                     read_window)
from vmae2.attention import set_backend  # noqa: E402
from vmae2.data.synthetic import encode_clip, render_clip  # noqa: E402
from vmae2.features import extract  # noqa: E402
from vmae2.models import create_model  # noqa: E402

NUM_VIDEOS = int(os.environ.get("VMAE2_BENCH_EXTRACT_VIDEOS", "2"))
WIDTH, HEIGHT = (int(v) for v in os.environ.get("VMAE2_BENCH_EXTRACT_SIZE", "320x240").split("x"))
GOP = int(os.environ.get("VMAE2_BENCH_EXTRACT_GOP", "25"))
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract_videos")
    videos = [encode_clip(render_clip(0, i, WIDTH, HEIGHT, 300), root / f"clip{i}.mp4", gop=GOP)
              for i in range(NUM_VIDEOS)]
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", num_classes=0).eval()
    official = copy.deepcopy(model)
    set_backend(official, "math")  # the official Attention: explicit softmax
    windows = sum(len(official_starts(frame_count(v), 4)) for v in videos)
    return videos, model, official, windows


def _run(benchmark, name, extract_all, windows, baseline):
    """Time ``extract_all()`` once and record the arm's windows/s (and, once both arms ran, the ratio)."""
    benchmark.pedantic(extract_all, rounds=1, iterations=1)
    rate = windows / benchmark.stats.stats.median
    RESULTS[name] = rate
    benchmark.extra_info.update({"arm": name, "windows": windows, "windows_per_s": round(rate, 2),
                                 "is_baseline": baseline, "video": f"{WIDTH}x{HEIGHT} gop {GOP}"})
    if len(RESULTS) == 2:
        ratio = RESULTS["vmae2"] / RESULTS["official"]
        benchmark.extra_info["speedup_vs_official"] = round(ratio, 2)
        print(f"\nextract windows/s: vmae2 {RESULTS['vmae2']:.2f}, official-style {RESULTS['official']:.2f}: "
              f"{ratio:.2f}x")


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
    videos, _, official, windows = setup
    official_extract(official, videos[0], step=64)  # warm-up
    _run(benchmark, "official", lambda: [official_extract(official, v, step=4) for v in videos], windows, True)
    decode, transform = _decode_and_transform_s(videos)
    total = benchmark.stats.stats.median
    benchmark.extra_info.update({"decode_s": round(decode, 2), "transform_s": round(transform, 2),
                                 "model_s": round(total - decode - transform, 2)})
    print(f"\nofficial-style split: decode {decode:.1f} s, transform {transform:.1f} s, model "
          f"{total - decode - transform:.1f} s of {total:.1f} s")


@pytest.mark.benchmark(group="extract-cpu")
def test_vmae2_extraction(benchmark, setup):
    videos, model, _, windows = setup
    extract(model, videos[0], stride=64)  # warm-up
    _run(benchmark, "vmae2", lambda: [extract(model, v, stride=4, batch_size=8) for v in videos], windows, False)
