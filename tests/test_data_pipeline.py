"""The pretraining data pipeline on generated videos: official sampling, both backends, bad files, determinism."""
import numpy as np
import pytest
import torch

pytest.importorskip("av", reason="PyAV is needed to make and decode the test videos")

from vmae2.data import check as check_cli  # noqa: E402
from vmae2.data.pretraining.clips import ClipConfig, ClipSource  # noqa: E402
from vmae2.data.lists import MixedList, read_pretrain_list  # noqa: E402
from vmae2.data.pretraining.loader import PretrainLoader, dali_available  # noqa: E402
from vmae2.data.pretraining.sampling import (  # noqa: E402
    crop_candidates, fixed_offsets, frame_ids, plan_rng, sample_start)
from vmae2.data.synthetic import encode_clip, make_bad_files, make_videos, render_clip  # noqa: E402

needs_dali = pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed (pip install vmae2[dali])")
SMALL = ClipConfig(clip_len=8, input_size=64, num_sample=2)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    make_videos(root, 6, seed=3, codecs=("h264", "vp9"), num_frames=(48,))
    return read_pretrain_list(root / "train.csv")


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad"))


def _official_frame_ids(start, n, clip_len=16, step=4):
    """Restatement of the official loop: 1-based offset, emit offset-1, advance while offset+step < n."""
    out, offset = [], start + 1
    for _ in range(clip_len):
        out.append(offset - 1)
        if offset + step < n:
            offset += step
    return out


@pytest.mark.parametrize("n", [300, 64, 65, 20, 5, 1])
def test_temporal_sampling_is_official(n):
    for index in range(20):
        rng = plan_rng(0, 0, index)
        start = sample_start(n, 16, 4, rng)
        assert 0 <= start <= max(0, n - 64)
        ids = frame_ids(start, n)
        assert list(ids) == _official_frame_ids(start, n)
        assert len(ids) == 16 and max(ids) < n
    assert frame_ids(0, 20)[-4:] == (16, 16, 16, 16)  # short clip: the last reachable frame repeats


def test_multiscale_crop_candidates():
    pairs = crop_candidates(320, 240)  # base 240 -> sides 240, 210, 180, 158
    assert (240, 240) in pairs and (210, 240) in pairs and (158, 240) not in pairs
    assert len(pairs) == 10  # 4 on the diagonal + 2 * 3 neighbours
    assert (224, 224) in crop_candidates(340, 256)  # 0.875 * 256 = 224: snapped (within 3 px)
    offsets = fixed_offsets(320, 240, 180, 180)
    assert len(offsets) == 13 and (0, 0) in offsets and (140, 60) in offsets and (70, 30) in offsets


def test_torch_batches_shape_range_and_plan(videos):
    loader = PretrainLoader(videos, batch_size=3, config=SMALL, seed=1, backend="torch", num_workers=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 2
    b = batches[0]
    assert b.video.shape == (6, 3, 8, 64, 64) and b.video.dtype == torch.float32
    pixels = b.video * STD + MEAN
    assert pixels.min() > -0.01 and pixels.max() < 1.01 and pixels.std() > 0.05
    assert not torch.equal(b.video[0], b.video[1])  # two views of one clip: different crops
    assert sorted(s for b in batches for s in b.slots) == list(range(6))


def test_official_default_geometry(videos):
    loader = PretrainLoader(videos[:1], batch_size=1, seed=0, backend="torch", num_workers=0)
    assert next(iter(loader)).video.shape == (1, 3, 16, 224, 224)


def test_same_seed_same_batches_any_worker_count(videos):
    def run(workers, seed=5, epoch=0):
        loader = PretrainLoader(videos, batch_size=2, config=SMALL, seed=seed, backend="torch", num_workers=workers)
        loader.set_epoch(epoch)
        return [b.video for b in loader]

    a, b = run(0), run(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # determinism: the same per-clip kernels, bit-exact
    assert all(torch.equal(x, y) for x, y in zip(run(0, epoch=1), run(2, epoch=1)))
    assert not all(torch.equal(x, y) for x, y in zip(a, run(0, epoch=1)))
    assert not all(torch.equal(x, y) for x, y in zip(a, run(0, seed=6)))


def test_a_worker_forked_after_the_parent_decoded_still_decodes(videos, tmp_path):
    """The parent converts frames to RGB, then forks (a DataLoader worker): the child's conversions must not
    inherit a swscale thread pool without its threads (PyAV >= 18.1.1 keeps one context per thread)."""
    import subprocess
    import sys

    script = (
        "import multiprocessing as mp\n"
        "from vmae2.data.decode import iter_frames\n"
        "def decode(path):\n"
        "    assert sum(len(chunk) for chunk in iter_frames(path)) > 0\n"
        "if __name__ == '__main__':\n"
        f"    path = {str(videos[0].path)!r}\n"
        "    decode(path)\n"
        "    child = mp.get_context('fork').Process(target=decode, args=(path,))\n"
        "    child.start(); child.join(60)\n"
        "    if child.is_alive(): child.kill(); raise SystemExit('the forked decode hung')\n"
        "    raise SystemExit(child.exitcode)\n")
    (tmp_path / "fork_decode.py").write_text(script)
    result = subprocess.run([sys.executable, str(tmp_path / "fork_decode.py")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_sharding_is_disjoint(videos):
    slots = []
    for rank in range(2):
        loader = PretrainLoader(videos, batch_size=1, config=SMALL, backend="torch", num_workers=0, rank=rank,
                                world_size=2)
        slots.append({s for b in loader for s in b.slots})
    assert not slots[0] & slots[1] and len(slots[0]) == len(slots[1]) == 3


def test_mixed_lists_feed_the_loader(videos):
    mixed = MixedList([(videos[:2], 3.0), (videos[2:], 1.0)], num_samples=8, seed=0)
    loader = PretrainLoader(mixed, batch_size=4, config=SMALL, backend="torch", num_workers=0)
    used = [r for b in loader for r in b.record_indices]
    assert len(used) == 8 and sum(r < 2 for r in used) == 6


def _loader_with_bad_files(videos, bad, backend, quarantine=None, config=SMALL):
    from vmae2.data.lists import VideoRecord

    bad_records = [VideoRecord(str(p), 0, -1, -1, True, "", 4, "bad") for p in bad.values()]
    records = list(videos) + bad_records
    return PretrainLoader(records, batch_size=len(records), config=config, seed=0, backend=backend, num_workers=0,
                          quarantine=quarantine), bad_records


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=needs_dali)])
def test_bad_files_are_skipped_counted_and_quarantined(videos, bad, backend, tmp_path):
    quarantine = tmp_path / "quarantine.tsv"
    bad = {k: v for k, v in bad.items() if k != "unsupported_codec"}  # decodable by PyAV: not bad here
    loader, bad_records = _loader_with_bad_files(videos, bad, backend, quarantine)
    batch = next(iter(loader))
    n_good = len(videos)
    assert batch.video.shape[0] == 2 * (n_good + len(bad_records))  # every slot filled
    assert all(r < n_good for r in batch.record_indices)  # only good records were used
    expected = {"missing": "missing", "empty": "empty", "random_bytes": "unreadable", "text": "unreadable",
                "truncated": "unreadable", "truncated_faststart": "truncated", "too_short": "too_short"}
    got = {path: reason for path, reason in loader.ledger.paths.items()}
    assert got == {str(bad[k]): v for k, v in expected.items()}
    assert sum(loader.ledger.encounters.values()) >= len(expected)
    lines = quarantine.read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == sorted(got)
    again, _ = _loader_with_bad_files(videos, bad, backend)
    assert next(iter(again)).record_indices == batch.record_indices  # the substitutes depend on the seed only


def test_wrong_codec_is_flagged(videos, bad):
    config = ClipConfig(clip_len=8, input_size=64, codecs=frozenset({"h264", "vp9"}))
    loader, _ = _loader_with_bad_files(videos, {"unsupported_codec": bad["unsupported_codec"]}, "torch",
                                       config=config)
    next(iter(loader))
    assert loader.ledger.paths == {str(bad["unsupported_codec"]): "wrong_codec"}


@needs_dali
def test_dali_and_torch_agree(videos):
    dali = list(PretrainLoader(videos, batch_size=3, config=SMALL, seed=2, backend="dali", num_workers=2))
    ref = list(PretrainLoader(videos, batch_size=3, config=SMALL, seed=2, backend="torch", num_workers=0))
    for d, r in zip(dali, ref):
        assert d.video.shape == r.video.shape and d.record_indices == r.record_indices
        for i, record_index in enumerate(np.repeat(r.record_indices, 2)):
            diff = (d.video[i] - r.video[i]).abs().mean().item()
            shifted = (d.video[i][:, 1:] - r.video[i][:, :-1]).abs().mean().item()
            codec = "h264" if videos[record_index].path.endswith(".mp4") else "vp9"
            # H.264: both read PyAV frames, only the resize differs. VP9: DALI's own decoder (colour conversion).
            assert diff < (0.01 if codec == "h264" else 0.06), (codec, diff)
            assert diff < shifted / 2, "frames are misaligned"


@needs_dali
def test_dali_same_seed_same_batches(videos):
    a = [b.video for b in PretrainLoader(videos, batch_size=2, config=SMALL, seed=4, backend="dali")]
    b = [b.video for b in PretrainLoader(videos, batch_size=2, config=SMALL, seed=4, backend="dali")]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_rawframe_folders(videos, tmp_path):
    from PIL import Image

    from vmae2.data.synthetic import decode_frames

    frames = decode_frames(videos[0].path)
    folder = tmp_path / "clip"
    folder.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"img_{i + 1:05}.jpg", quality=95)
    (tmp_path / "list.txt").write_text(f"clip 1 {len(frames)}\n")
    records = read_pretrain_list(tmp_path / "list.txt", data_root=str(tmp_path))
    batch = next(iter(PretrainLoader(records, batch_size=1, config=SMALL, backend="torch", num_workers=0)))
    assert batch.video.shape == (2, 3, 8, 64, 64)
    source = ClipSource(records, SMALL)
    clip = source.load_slot(0, 0)
    assert clip.info.num_frames == len(frames) and clip.info.codec == "rawframes"


def test_telemetry(videos):
    loader = PretrainLoader(videos, batch_size=2, config=SMALL, backend="torch", num_workers=0)
    for _ in loader:
        pass
    summary = loader.telemetry.summary()
    assert summary["batches"] == 3 and summary["clips_per_s"] > 0
    assert 0 < summary["data_wait_fraction"] <= 1


def test_check_cli(videos, bad, tmp_path, capsys):
    good_list = tmp_path / "good.txt"
    good_list.write_text("".join(f"{r.path} 0 -1\n" for r in videos))
    assert check_cli.main([str(good_list), "--bad_out", str(tmp_path / "none.txt")]) == 0
    mixed = tmp_path / "mixed.txt"
    mixed.write_text(good_list.read_text() + "".join(f"{p} 0 -1\n" for p in bad.values()))
    out_file = tmp_path / "bad.txt"
    assert check_cli.main([str(mixed), "--bad_out", str(out_file), "--codecs", "h264,vp9"]) == 1
    table = capsys.readouterr().out
    assert "6 good, 8 bad" in table and "truncated" in table and "wrong_codec" in table
    assert sorted(line.split("\t")[0] for line in out_file.read_text().splitlines()) == sorted(map(str, bad.values()))
    assert check_cli.main([str(tmp_path / "nope.txt")]) == 2


def test_check_length_rule(tmp_path, capsys):
    """The official clip's rule: < 16 frames is too_short (bad); < 16 x 4 = 64 frames is short (usable)."""
    lengths = {"eight": 8, "twenty": 20, "seventy": 70}
    paths = {name: encode_clip(render_clip(0, i, 64, 48, n), tmp_path / f"{name}.mp4")
             for i, (name, n) in enumerate(lengths.items())}
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p} 0 -1\n" for p in paths.values()))
    assert check_cli.main([str(listing), "--preset", "official_defaults", "--bad_out", str(tmp_path / "bad.txt")]) == 1
    out = capsys.readouterr().out
    rows = {name: next(line for line in out.splitlines() if line.startswith(str(p))) for name, p in paths.items()}
    assert "BAD too_short: 8 frames < 16" in rows["eight"]
    assert rows["twenty"].endswith("short (frames repeat)") and rows["seventy"].endswith("ok")
    assert "2 good, 1 bad" in out and "1 good file(s) have fewer than 16 x 4 = 64 frames" in out
    # a shorter recipe's clip: 8 frames are enough for --num_frames 8 (but short: < 8 x 2), 20 frames are not short
    assert check_cli.main([str(listing), "--num_frames", "8", "--sampling_rate", "2",
                           "--bad_out", str(tmp_path / "bad.txt")]) == 0
    assert "1 good file(s) have fewer than 8 x 2 = 16 frames" in capsys.readouterr().out


def test_bad_config_values():
    with pytest.raises(ValueError, match="num_sample 0"):
        ClipConfig(num_sample=0)
    with pytest.raises(ValueError, match="backend 'fast'"):
        PretrainLoader([], batch_size=1, backend="fast")
    with pytest.raises(ValueError, match="empty"):
        PretrainLoader([], batch_size=1, backend="torch")


@needs_dali
def test_dali_decode_failure_is_recovered(videos, bad, monkeypatch):
    """DALI's CPU decoder cannot read MPEG-4 part 2: pretend it can, watch the batch fail, get checked with
    PyAV (which reads it) and go through PyAV instead."""
    import vmae2.data.pretraining.dali as dali_module
    from vmae2.data.lists import VideoRecord

    monkeypatch.setattr(dali_module, "DALI_CPU_CODECS", dali_module.DALI_CPU_CODECS | {"mpeg4"})
    records = list(videos) + [VideoRecord(str(bad["unsupported_codec"]), 0, -1, -1, True, "", 4, "mpeg4")]
    loader = PretrainLoader(records, batch_size=len(records), config=SMALL, backend="dali", num_workers=1)
    batch = next(iter(loader))
    mpeg4 = len(records) - 1
    assert mpeg4 in batch.record_indices and loader._dali.pyav_only == {mpeg4}
    assert batch.video.shape[0] == 2 * len(records) and not loader.ledger.paths


def test_keyframe_seek_gives_the_same_frames(tmp_path):
    """Late clips are decoded after a keyframe seek; the frames must equal a full decode's."""
    from vmae2.data.decode import decode_frames as decode_ids
    from vmae2.data.decode import probe
    from vmae2.data.synthetic import decode_frames as decode_all

    make_videos(tmp_path, 2, seed=1, codecs=("h264", "vp9"), num_frames=(160,))
    for record in read_pretrain_list(tmp_path / "train.csv"):
        every = decode_all(record.path)
        info = probe(record)
        for start in (0, 61, 96):
            ids = frame_ids(start, info.num_frames)
            assert np.array_equal(decode_ids(record, ids, info), every[list(ids)]), (record.path, start)


def test_persistent_workers_follow_the_epoch(videos):
    """One loader across epochs (worker processes kept): epoch 1 must equal a fresh loader's epoch 1."""
    loader = PretrainLoader(videos, batch_size=2, config=SMALL, seed=5, backend="torch", num_workers=2)
    list(loader)
    loader.set_epoch(1)
    second = [b.video for b in loader]
    fresh = PretrainLoader(videos, batch_size=2, config=SMALL, seed=5, backend="torch", num_workers=0)
    fresh.set_epoch(1)
    assert all(torch.equal(x, y) for x, y in zip(second, (b.video for b in fresh)))
