"""Sharded corpora: ``make_shards`` writes WebDataset-layout tars with an index; the loaders read them as a stream
that decodes like the list, splits without overlap across ranks and workers, resumes mid-epoch, and quarantines a
damaged sample without stopping."""
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av", reason="PyAV makes and decodes the videos")

from vmae2.data.pretraining.clips import ClipConfig, ClipSource  # noqa: E402
from vmae2.data.lists import read_list, read_paths  # noqa: E402
from vmae2.data.pretraining.loader import PretrainLoader  # noqa: E402
from vmae2.data.make_shards import main, make_shards  # noqa: E402
from vmae2.data.shards import ShardList, expand_braces, is_shards, scan_tar, shard_records  # noqa: E402
from vmae2.data.synthetic import make_labeled_videos, make_videos  # noqa: E402

CLIP = ClipConfig(clip_len=4, input_size=32, num_sample=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    make_videos(root / "v", 10, seed=0, sizes=((64, 48),), num_frames=(16,))
    listing = root / "v" / "train.csv"
    index = make_shards(str(listing), root / "s", shard_bytes=30_000)
    return listing, root / "s", index


def test_make_shards_writes_webdataset_tars_and_an_index(corpus):
    listing, out, index = corpus
    records = read_list(listing, kind="pretrain")
    assert index["samples"] == 10 and len(index["shards"]) > 2 and not index["skipped"]  # split by bytes
    assert all(s["bytes"] <= 30_000 or len(s["samples"]) == 1 for s in index["shards"])
    stored = json.loads((out / "index.json").read_text())
    assert stored["samples"] == 10
    assert [s["name"] for s in stored["shards"]] == sorted(p.name for p in out.glob("*.tar"))
    with tarfile.open(out / stored["shards"][0]["name"]) as t:
        names = t.getnames()
        assert names[:2] == ["000000000.mp4", "000000000.json"]  # a sample's members share its key
        assert t.extractfile(names[0]).read() == Path(records[0].path).read_bytes()  # the file unchanged
        assert json.loads(t.extractfile(names[1]).read())["path"] == records[0].path
    paths = [s["path"] for sh in stored["shards"] for s in sh["samples"]]
    assert paths == [r.path for r in records]


def test_shards_decode_the_same_clips_as_the_list(corpus):
    listing, out, _ = corpus
    records = read_list(listing, kind="pretrain")
    shard = ShardList.open(str(out), seed=0)
    by_path = {r.source: i for i, r in enumerate(shard.records)}  # the original path travels in .json
    a, b = ClipSource(records, CLIP, seed=5), ClipSource(shard.records, CLIP, seed=5)
    for slot, record in enumerate(records[:4]):
        va, _, _, fa = a.load_batch([(slot, slot)])
        vb, _, _, fb = b.load_batch([(slot, by_path[record.path])])
        assert not fa and not fb
        assert torch.equal(va, vb), record.path  # the same plan from (seed, epoch, slot), the same decode


def test_the_stream_order_is_seeded_and_a_permutation(corpus):
    _, out, _ = corpus
    s = ShardList.open(str(out), seed=1, buffer=4)
    e0, e1 = s.epoch_indices(0), s.epoch_indices(1)
    assert sorted(e0.tolist()) == list(range(10)) and sorted(e1.tolist()) == list(range(10))
    assert np.array_equal(e0, ShardList.open(str(out), seed=1, buffer=4).epoch_indices(0))  # (seed, epoch) only
    assert not np.array_equal(e0, e1)
    assert not np.array_equal(e0, ShardList.open(str(out), seed=2, buffer=4).epoch_indices(0))


def _slots(loader, start=0):
    return [s for batch in loader.iterate(start) for s in batch.slots]


def test_ranks_and_workers_split_the_stream_without_overlap_and_resume_mid_epoch(corpus):
    _, out, _ = corpus
    shard = ShardList.open(str(out), seed=0, buffer=3)
    loaders = [PretrainLoader(shard, batch_size=2, config=CLIP, rank=r, world_size=2, backend="torch",
                              num_workers=2 if r == 0 else 0) for r in range(2)]
    for loader in loaders:
        loader.set_epoch(1)
    per_rank = [_slots(loader) for loader in loaders]
    assert len(per_rank[0]) == len(per_rank[1]) == 4  # 10 videos, global batch 4: 2 steps, the tail dropped
    assert not set(per_rank[0]) & set(per_rank[1]) and sorted(per_rank[0] + per_rank[1]) == list(range(8))
    assert len(set(per_rank[0])) == 4  # two workers, no sample twice
    one = PretrainLoader(shard, batch_size=2, config=CLIP, accum_steps=2, backend="torch", num_workers=0)
    one.set_epoch(1)
    assert _slots(one, 2) == sorted(s for r in per_rank for s in r[2:])  # resumed after step 1 on one rank
    full = list(loaders[1].iterate(0))
    resumed = list(loaders[1].iterate(1))  # the same rank resumed after its first batch: the same clips
    assert [b.slots for b in resumed] == [b.slots for b in full[1:]]
    assert all(torch.equal(a.video, b.video) for a, b in zip(resumed, full[1:]))
    order = shard.epoch_indices(1)
    assert [r for b in full for r in b.record_indices] == [int(order[s]) for s in per_rank[1]]  # the stream's order


def test_a_damaged_sample_is_quarantined_and_training_goes_on(corpus, tmp_path):
    listing, _, _ = corpus
    out = tmp_path / "s"
    make_shards(str(listing), out, shard_bytes=10**9)
    tar = next(out.glob("*.tar"))
    sample = scan_tar(tar)[3]
    with open(tar, "r+b") as f:  # the bytes of sample 3 become garbage inside the tar
        f.seek(sample["offset"])
        f.write(b"\x00garbage" * (sample["size"] // 8))
    quarantine = tmp_path / "quarantine.tsv"
    loader = PretrainLoader(ShardList.open(str(out), seed=0), batch_size=5, config=CLIP, backend="torch",
                            num_workers=0, quarantine=quarantine)
    batches = list(loader.iterate(0))
    assert len(batches) == 2 and all(torch.isfinite(b.video).all() for b in batches)
    assert 3 not in [r for b in batches for r in b.record_indices]  # a substitute took its slot
    text = quarantine.read_text()
    assert f"{tar}#000000003." in text and "unreadable" in text


def test_labels_travel_and_the_finetune_loader_streams(tmp_path):
    from vmae2.data.classification.augment import FinetuneAugment
    from vmae2.data.classification.loader import ClassifyConfig, ClassifyLoader

    lists = make_labeled_videos(tmp_path / "v", {"train": 2}, size=(48, 48), num_frames=16)
    assert main([str(lists["train"]), "--out", str(tmp_path / "s"), "--shard_bytes", "20000"]) == 0
    shard = ShardList.open(str(tmp_path / "s"), seed=0)
    truth = {r.path: r.label for r in read_paths(lists["train"])}
    assert {r.source: r.label for r in shard.records} == truth
    config = ClassifyConfig(clip_len=4, rate=2, input_size=32, short_side_size=32, num_classes=4)
    loader = ClassifyLoader(shard, mode="train", batch_size=2, config=config, num_workers=0,
                            transform=FinetuneAugment(32))
    loader.set_epoch(0)
    seen = [(s, int(i)) for b in loader.iterate(0) for s, i in zip(b.slots, b.video_index)]
    order = shard.epoch_indices(0)
    assert [i for _, i in seen] == order[:8].tolist()  # the stream's order, not a permutation of the list
    labels = [int(lab) for b in loader.iterate(0) for lab in b.labels]
    assert labels == [shard.records[i].label for i in order[:8]]


def test_brace_patterns_and_tars_without_an_index(corpus, tmp_path):
    _, out, index = corpus
    n = len(index["shards"])
    assert expand_braces("a-{01..03}.tar") == ["a-01.tar", "a-02.tar", "a-03.tar"]
    assert expand_braces("{x,y}{1..2}") == ["x1", "x2", "y1", "y2"]
    with pytest.raises(ValueError, match="FIRST..LAST"):
        expand_braces("s-{a..b}.tar")
    pattern = f"{out}/shard-{{000000..{n - 1:06d}}}.tar"
    assert is_shards(pattern) and is_shards(str(out)) and not is_shards(str(out / "index.json"))
    assert [len(r) for r in shard_records(pattern)] == [len(s["samples"]) for s in index["shards"]]
    bare = tmp_path / "bare"
    bare.mkdir()
    for tar in out.glob("*.tar"):
        (bare / tar.name).write_bytes(tar.read_bytes())
    scanned = shard_records(str(bare))  # no index.json: the tars are scanned
    assert [[r.source for r in s] for s in scanned] == [[r.source for r in s] for s in shard_records(str(out))]
    with pytest.raises(ValueError, match="missing shards"):
        shard_records(f"{out}/shard-{{000000..{n + 3:06d}}}.tar")


def test_train_and_finetune_read_a_shard_folder(tmp_path):
    """``--data_path DIR`` of shards runs both training entry points; the preset rule counts the index's videos."""
    import os
    import subprocess
    import sys

    lists = make_labeled_videos(tmp_path / "v", {"train": 2}, size=(48, 48), num_frames=16)
    make_shards(str(lists["train"]), tmp_path / "s", shard_bytes=20_000)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--num_frames", "4", "--batch_size", "2", "--num_workers", "0", "--max_steps", "2",
              "--data_path", str(tmp_path / "s")]
    pre = subprocess.run([sys.executable, "-m", "vmae2.train", "--preset", "demo", "--input_size", "32",
                          "--num_sample", "1", *common, "--output_dir", str(tmp_path / "pt")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert pre.returncode == 0, pre.stderr[-2000:]
    fine = subprocess.run([sys.executable, "-m", "vmae2.finetune", "--model", "vit_tiny_patch16_224", "--nb_classes",
                           "4", "--sampling_rate", "2", "--input_size", "32", "--short_side_size", "32", *common,
                           "--output_dir", str(tmp_path / "ft")], capture_output=True, text=True, env=env, timeout=600)
    assert fine.returncode == 0, fine.stderr[-2000:]
    assert "no --preset: 8 videos and no GPU, so --preset small_data" in fine.stderr
    assert "8 training videos" in fine.stdout
    for run in ("pt", "ft"):
        steps = [json.loads(line)["step"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert steps[-1] == 2
