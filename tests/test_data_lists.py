import os

import numpy as np
import pytest

from vmae2.data.lists import (
    MixedList,
    MixedSampler,
    VideoRecord,
    read_finetune_csv,
    read_list,
    read_pretrain_list,
    shard_indices,
)


def _write(tmp_path, text, name="list.txt"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _recs(n, source="s"):
    return [VideoRecord(f"{source}/{i}.mp4", 0, -1, -1, True, "", 4, source) for i in range(n)]


# -- pre-training list ----------------------------------------------------------------------------------

PRETRAIN = """\
# hybrid list
k400/abc.mp4 0 -1

SomethingV2/frames/123 1 50
AVA2.2/frames/clip_9 0 900
other/frames/x 2 30
   # indented comment
my clips/with space.mp4 0 -1
"""


def test_pretrain_formats_and_hybrid_rules(tmp_path):
    p = _write(tmp_path, PRETRAIN)
    recs = read_pretrain_list(p, fname_tmpl="frame_{:04}.png", step=4)
    assert len(recs) == 5
    v, ss, ava, other, spaced = recs
    assert (v.path, v.start, v.total, v.label, v.is_video, v.step) == ("k400/abc.mp4", 0, -1, -1, True, 4)
    assert v.source == str(p)
    assert not ss.is_video and (ss.start, ss.total, ss.fname_tmpl, ss.step) == (1, 50, "img_{:05}.jpg", 2)
    assert ss.frame_path(0) == os.path.join("SomethingV2/frames/123", "img_00001.jpg")
    assert (ava.fname_tmpl, ava.step) == ("image_{:06}.jpg", 4)
    assert ava.frame_path(3) == os.path.join("AVA2.2/frames/clip_9", "image_000003.jpg")
    assert (other.fname_tmpl, other.step, other.start) == ("frame_{:04}.png", 4, 2)
    assert other.frame_path(0).endswith("frame_0002.png")
    assert spaced.path == "my clips/with space.mp4" and spaced.is_video
    with pytest.raises(ValueError, match="video file"):
        v.frame_path(0)


def test_pretrain_hybrid_rules_off_and_ssv2_step(tmp_path):
    p = _write(tmp_path, "SomethingV2/a 0 40\nAVA2.2/b 0 40\n")
    off = read_pretrain_list(p, hybrid_rules=False, step=3)
    assert [(r.fname_tmpl, r.step) for r in off] == [("img_{:05}.jpg", 3)] * 2
    ss = read_pretrain_list(p, ssv2_step=4, fname_tmpl="x_{}.jpg")[0]
    assert (ss.fname_tmpl, ss.step) == ("img_{:05}.jpg", 4)


def test_hybrid_rule_matches_data_root_and_skips_videos(tmp_path):
    p = _write(tmp_path, "a 0 40\nb.webm 0 -1\n")
    frames, video = read_pretrain_list(p, data_root="/data/SomethingV2")
    assert frames.step == 2 and frames.path == "/data/SomethingV2/a"
    assert video.step == 4 and video.is_video  # official code applies the rules to rawframes only


def test_data_root_relative_absolute_and_uri(tmp_path):
    p = _write(tmp_path, "rel/a.mp4 0 -1\n/abs/b.mp4 0 -1\ns3://bucket/c.mp4 0 -1\n")
    recs = read_pretrain_list(p, data_root="/data/videos")
    assert [r.path for r in recs] == ["/data/videos/rel/a.mp4", "/abs/b.mp4", "s3://bucket/c.mp4"]
    assert read_pretrain_list(p)[0].path == "rel/a.mp4"
    assert read_pretrain_list(p, data_root="s3://bkt")[0].path == "s3://bkt/rel/a.mp4"


def test_source_override_and_crlf(tmp_path):
    p = tmp_path / "l.txt"
    p.write_bytes(b"a.mp4 0 -1\r\nb 1 10\r\n")
    recs = read_pretrain_list(p, source="k710")
    assert [r.path for r in recs] == ["a.mp4", "b"] and {r.source for r in recs} == {"k710"}


@pytest.mark.parametrize("line,msg", [
    ("only_path", "expected 3 columns"),
    ("a.mp4 0", "expected 3 columns"),
    ("a.mp4 zero -1", "start_idx 'zero' is not an integer"),
    ("a 0 ten", "total_frames 'ten' is not an integer"),
    ("a 0 0", "total_frames 0"),
    ("a -2 10", "start_idx -2 is negative"),
    ("a 1 100 5", "too many columns"),  # V1-style extra label column
])
def test_pretrain_malformed(tmp_path, line, msg):
    p = _write(tmp_path, f"# header\n\nok.mp4 0 -1\n{line}\n")
    with pytest.raises(ValueError, match=msg) as e:
        read_pretrain_list(p)
    text = str(e.value)
    assert f"{p}:4:" in text and repr(line) in text and "path start_idx total_frames" in text


def test_empty_list(tmp_path):
    p = _write(tmp_path, "# nothing\n\n")
    with pytest.raises(ValueError, match="no records"):
        read_pretrain_list(p)
    with pytest.raises(ValueError, match="no records"):
        read_finetune_csv(p)


# -- fine-tune CSV ---------------------------------------------------------------------------------------

def test_finetune_video_csv(tmp_path):
    p = _write(tmp_path, "k400/jf7.mp4 325\nk400/JTl.mp4 0\n")
    recs = read_finetune_csv(p, data_root="/d", num_classes=400, step=2)
    assert [(r.path, r.label, r.is_video, r.total, r.step) for r in recs] == [
        ("/d/k400/jf7.mp4", 325, True, -1, 2), ("/d/k400/JTl.mp4", 0, True, -1, 2)]


def test_finetune_rawframes_csv(tmp_path):
    p = _write(tmp_path, "ssv2/74225 62 140\nssv2/116154 51 127\n")
    recs = read_finetune_csv(p, num_classes=174)
    r = recs[0]
    assert (r.path, r.total, r.label, r.is_video, r.start, r.fname_tmpl) == (
        "ssv2/74225", 62, 140, False, 1, "img_{:05}.jpg")
    assert r.frame_path(0).endswith("img_00001.jpg")


def test_finetune_spaces_need_explicit_kind(tmp_path):
    p = _write(tmp_path, "a.mp4 1\nmy video.mp4 2\n")
    with pytest.raises(ValueError, match=r":2: .*needs commas between the columns"):
        read_finetune_csv(p)
    recs = read_finetune_csv(p, kind="video")
    assert [(r.path, r.label) for r in recs] == [("a.mp4", 1), ("my video.mp4", 2)]
    q = _write(tmp_path, "my frames/x 30 7\n", "q.txt")
    assert read_finetune_csv(q, kind="rawframes")[0].path == "my frames/x"
    with pytest.raises(ValueError, match="a path with spaces needs commas"):
        read_finetune_csv(q)


@pytest.mark.parametrize("line,msg", [
    ("a.mp4 -1", "label -1 is negative"),
    ("a.mp4 cat", "label 'cat' is not an integer"),
    ("a.mp4 1.5", "label '1.5' is not an integer"),
    ("a.mp4 400", r"label 400 >= num_classes=400.*\[0, 400\)"),
])
def test_finetune_bad_labels(tmp_path, line, msg):
    p = _write(tmp_path, f"ok.mp4 3\n{line}\n")
    with pytest.raises(ValueError, match=msg) as e:
        read_finetune_csv(p, num_classes=400)
    assert f"{p}:2:" in str(e.value) and repr(line) in str(e.value)


def test_finetune_bad_rawframes_total(tmp_path):
    p = _write(tmp_path, "f 0 3\n")
    with pytest.raises(ValueError, match="total_frames 0 must be >= 1"):
        read_finetune_csv(p, kind="rawframes")


# -- read_list --------------------------------------------------------------------------------------------

def test_read_list_dispatch(tmp_path):
    pre = _write(tmp_path, "a.mp4 0 -1\n", "pre.txt")
    vid = _write(tmp_path, "a.mp4 5\n", "vid.csv")
    raw = _write(tmp_path, "f 30 5\n", "raw.csv")
    r = read_list(pre, data_root="/r")[0]
    assert r.is_video and r.label == -1 and r.path == "/r/a.mp4"
    assert read_list(vid)[0].label == 5
    # A fine-tune rawframe CSV reads as a pre-training list under "auto": the kind must be given.
    assert read_list(raw)[0].label == -1
    r = read_list(raw, kind="rawframes")[0]
    assert (r.total, r.label) == (30, 5)
    with pytest.raises(ValueError, match="cannot infer"):
        read_list(_write(tmp_path, "x y z w\n", "bad.txt"))
    with pytest.raises(ValueError, match="kind must be"):
        read_list(pre, kind="csv")


# -- mixing -------------------------------------------------------------------------------------------------

def _sources_of(mixed, idx):
    return np.searchsorted(mixed.offsets, idx, side="right") - 1


def test_mixing_proportions():
    mixed = MixedList([(_recs(500, "a"), 3.0), (_recs(50, "b"), 1.0), (_recs(2000, "c"), 1.0)],
                      num_samples=10_000, seed=0)
    idx = mixed.epoch_indices(0)
    assert len(idx) == 10_000 and idx.min() >= 0 and idx.max() < len(mixed)
    frac = np.bincount(_sources_of(mixed, idx), minlength=3) / len(idx)
    np.testing.assert_allclose(frac, [0.6, 0.2, 0.2], atol=0.01)
    assert [mixed[i].source for i in idx[:3]] == [mixed.records[i].source for i in idx[:3]]
    # the order interleaves sources: in every 1000-long window each source has roughly its share
    for w in range(10):
        win = np.bincount(_sources_of(mixed, idx[w * 1000:(w + 1) * 1000]), minlength=3) / 1000
        np.testing.assert_allclose(win, [0.6, 0.2, 0.2], atol=0.06)


def test_mixing_walks_permutations():
    mixed = MixedList([(_recs(7, "a"), 1.0), (_recs(3, "b"), 1.0)], num_samples=40, seed=1)
    idx = mixed.epoch_indices(2)
    a = idx[idx < 7]
    b = idx[idx >= 7] - 7
    assert len(a) == len(b) == 20
    for k in range(0, 14, 7):  # each full pass over a list covers it once
        assert sorted(a[k:k + 7]) == list(range(7))
    for k in range(0, 18, 3):
        assert sorted(b[k:k + 3]) == list(range(3))


def test_mixing_defaults_and_zero_weight():
    mixed = MixedList([(_recs(10), 1.0), (_recs(5), 0.0), (_recs(20), 1.0)])
    assert mixed.num_samples == 30 and len(mixed) == 35
    idx = mixed.epoch_indices(0)
    assert not ((idx >= 10) & (idx < 15)).any()
    assert mixed.quotas().tolist() == [15, 0, 15]


def test_mixing_determinism():
    srcs = [(_recs(100), 2.0), (_recs(30), 1.0)]
    a, b = MixedList(srcs, seed=5), MixedList(srcs, seed=5)
    np.testing.assert_array_equal(a.epoch_indices(3), b.epoch_indices(3))
    assert not np.array_equal(a.epoch_indices(3), a.epoch_indices(4))
    assert not np.array_equal(a.epoch_indices(3), MixedList(srcs, seed=6).epoch_indices(3))


@pytest.mark.parametrize("bad", [[], [(_recs(3), -1.0)], [(_recs(3), 0.0)], [([], 1.0)],
                                 [(_recs(3), float("nan"))]])
def test_mixing_rejects_bad_sources(bad):
    with pytest.raises(ValueError):
        MixedList(bad)


# -- sharding ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,world", [(10, 3), (9, 3), (2, 4), (101, 8)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shard_indices(n, world, drop_last):
    seq = np.arange(n) * 10
    shards = [shard_indices(seq, r, world, drop_last=drop_last) for r in range(world)]
    size = n // world if drop_last else -(-n // world)
    assert all(len(s) == size for s in shards)
    # interleaving the shards rebuilds the (padded / truncated) sequence: positions are disjoint
    rebuilt = np.stack(shards, 1).reshape(-1) if size else np.array([], dtype=seq.dtype)
    expect = seq[:size * world] if drop_last else np.resize(seq, size * world)
    np.testing.assert_array_equal(rebuilt, expect)
    with pytest.raises(ValueError):
        shard_indices(seq, world, world)


def test_mixed_shards_disjoint_and_sampler():
    mixed = MixedList([(_recs(37, "a"), 1.0), (_recs(11, "b"), 1.0)], seed=3)  # 48 samples
    full = mixed.epoch_indices(1)
    world = 5
    shards = [mixed.epoch_indices(1, rank=r, world_size=world) for r in range(world)]
    assert {len(s) for s in shards} == {10}
    np.testing.assert_array_equal(np.stack(shards, 1).reshape(-1)[:48], full)
    dropped = [mixed.epoch_indices(1, rank=r, world_size=world, drop_last=True) for r in range(world)]
    assert {len(s) for s in dropped} == {9}
    sampler = MixedSampler(mixed, rank=2, world_size=world)
    sampler.set_epoch(1)
    assert len(sampler) == 10 and list(sampler) == shards[2].tolist()
    sampler.set_epoch(2)
    assert list(sampler) != shards[2].tolist()
    with pytest.raises(ValueError):
        MixedSampler(mixed, rank=5, world_size=5)


# -- lists from a folder (python -m vmae2.data.make_lists); class names and commas in lists ---------------

def _touch_videos(root, layout):
    for rel in layout:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")


def test_make_lists_from_class_folders(tmp_path):
    from vmae2.data.make_lists import main

    _touch_videos(tmp_path / "v", [f"blue_squares/{i}.mp4" for i in range(5)] +
                  [f"red circles/sub/{i}.webm" for i in range(5)] + ["red circles/notes.txt"])
    assert main([str(tmp_path / "v"), "--out", str(tmp_path / "lists"), "--val_fraction", "0.2"]) == 0
    lists = tmp_path / "lists"
    assert (lists / "classes.txt").read_text() == "blue_squares\nred circles\n"
    pre = read_list(lists / "pretrain.txt")
    assert len(pre) == 10 and all(r.is_video and os.path.isabs(r.path) for r in pre)
    train = read_finetune_csv(lists / "train.csv", num_classes=2)
    val = read_finetune_csv(lists / "val.csv", num_classes=2)
    assert sorted(r.label for r in val) == [0, 1] and len(train) == 8  # one of each class's five in val
    assert {r.path for r in train} | {r.path for r in val} == {r.path for r in pre}
    assert all(("red circles" in r.path) == (r.label == 1) for r in train + val)
    # the same seed gives the same split; another seed may not
    main([str(tmp_path / "v"), "--out", str(tmp_path / "again")])
    assert (tmp_path / "again" / "val.csv").read_text() == (lists / "val.csv").read_text()


def test_make_lists_flat_folder_and_bad_folders(tmp_path, capsys):
    from vmae2.data.make_lists import main

    _touch_videos(tmp_path / "flat", ["a.mp4", "b.avi"])
    assert main([str(tmp_path / "flat"), "--out", str(tmp_path / "l")]) == 0
    assert sorted(os.listdir(tmp_path / "l")) == ["pretrain.txt"]
    assert "pretraining list only" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "l2")]) == 2
    assert "no videos in" in capsys.readouterr().err
    _touch_videos(tmp_path / "mixed", ["a.mp4", "cls/b.mp4"])
    assert main([str(tmp_path / "mixed"), "--out", str(tmp_path / "l3")]) == 2
    assert "move each video into its class folder" in capsys.readouterr().err


def test_finetune_list_with_class_names_and_commas(tmp_path):
    names = ["blue_squares", "red circles"]
    p = _write(tmp_path, "path,label\na b.mp4,blue_squares\nc.mp4, Red Circles\nd.mp4,1\n", "named.csv")
    recs = read_finetune_csv(p, num_classes=2, class_names=names)
    assert [(r.path, r.label) for r in recs] == [("a b.mp4", 0), ("c.mp4", 1), ("d.mp4", 1)]
    assert [r.label for r in read_list(p, class_names=names)] == [0, 1, 1]
    q = _write(tmp_path, "x.mp4,0,-1\n", "pre.csv")
    assert read_list(q)[0].is_video
    # a class name without the class-name file: the error says how to give it
    with pytest.raises(ValueError, match=r"named.csv:2: label 'blue_squares' is not an integer.*--class_names"):
        read_finetune_csv(p, num_classes=2)
    with pytest.raises(ValueError, match=r":2: label 'blue_squares' is not an integer nor one of the 1 class"):
        read_finetune_csv(p, num_classes=2, class_names=["cats"])
    with pytest.raises(ValueError, match=r":1: .*expected a pretraining list.*make_lists"):
        read_list(_write(tmp_path, "a;b;c;d\n", "semi.txt"))
