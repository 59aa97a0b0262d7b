"""Data pipeline throughput: clips/s of vmae2's loaders against an official-style loader, same files, one run.

The official-style loader decodes with the same decoder (PyAV, keyframe seek) and the same sampling plans,
then augments like the official ``GroupMultiScaleCrop``: per frame, PIL crop + bilinear resize, then
``ToTensor`` and ``Normalize``. vmae2's torch path crops and resizes all frames of a view in one call; the
DALI path decodes VP9 itself and augments in its own threads. Workload: the official recipe's repeated
sampling (``num_sample`` views per decoded clip), 16 frames every 4th, 224 px.
"""
import os

import numpy as np
import pytest
import torch

pytest.importorskip("av")
from PIL import Image  # noqa: E402

from vmae2.data.pretraining.clips import IMAGENET_MEAN, IMAGENET_STD, ClipConfig, ClipSource  # noqa: E402
from vmae2.data.decode import decode_frames  # noqa: E402
from vmae2.data.lists import read_pretrain_list  # noqa: E402
from vmae2.data.pretraining.loader import PretrainLoader, dali_available  # noqa: E402
from vmae2.data.synthetic import make_videos  # noqa: E402

NUM_CLIPS = int(os.environ.get("VMAE2_BENCH_CLIPS", "8"))
NUM_SAMPLE = 4  # the official scripts' repeated sampling
CONFIG = ClipConfig(num_sample=NUM_SAMPLE)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_videos")
    make_videos(root, NUM_CLIPS, seed=0, codecs=("h264", "vp9"), sizes=((320, 240),), num_frames=(150,))
    return read_pretrain_list(root / "train.csv")


def official_style_epoch(records) -> int:
    """One epoch the official way: decode, then per view and per frame PIL crop + resize, ToTensor, Normalize."""
    source = ClipSource(records, CONFIG)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    clips = 0
    for slot in range(len(records)):
        clip = source.plan(slot, slot)
        frames = decode_frames(clip.record, clip.plan.frame_ids, clip.info)
        images = [Image.fromarray(f) for f in frames]
        for c in clip.plan.crops:
            views = [img.crop((c.x, c.y, c.x + c.w, c.y + c.h)).resize((224, 224), Image.BILINEAR) for img in images]
            stacked = torch.from_numpy(np.stack([np.asarray(v) for v in views])).permute(3, 0, 1, 2).float() / 255
            _ = (stacked - mean) / std  # [3, T, 224, 224]
            clips += 1
    return clips


def vmae2_epoch(records, backend: str) -> int:
    loader = PretrainLoader(records, batch_size=2, config=CONFIG, backend=backend, num_workers=2 if backend == "dali"
                            else 0)
    return sum(batch.video.shape[0] for batch in loader)


def _run(benchmark, fn, *args, name, baseline=False):
    clips = fn(*args)  # warm-up (imports, DALI pipeline build) outside the timing
    benchmark.pedantic(fn, args=args, rounds=3, iterations=1)
    benchmark.extra_info.update({"loader": name, "clips_per_epoch": clips, "is_baseline": baseline,
                                 "clips_per_s": round(clips / benchmark.stats.stats.median, 2)})


@pytest.mark.benchmark(group="data-cpu")
def test_official_style_loader(benchmark, records):
    _run(benchmark, official_style_epoch, records, name="official-style (PyAV + PIL per frame)", baseline=True)


@pytest.mark.benchmark(group="data-cpu")
def test_vmae2_torch_loader(benchmark, records):
    _run(benchmark, vmae2_epoch, records, "torch", name="vmae2 torch (PyAV + batched resize)")


@pytest.mark.benchmark(group="data-cpu")
@pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed")
def test_vmae2_dali_loader(benchmark, records):
    _run(benchmark, vmae2_epoch, records, "dali", name="vmae2 DALI (CPU backend)")
