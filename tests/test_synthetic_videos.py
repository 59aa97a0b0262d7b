"""Synthetic video sets: real encoded files, deterministic content, visible motion, official list format,
and the deliberately broken inputs for loader tests."""
import os
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from vmae2.data import synthetic  # noqa: E402
from vmae2.data.make_videos import main as make_videos_main  # noqa: E402

CODECS = ("h264", "vp9", "vp8", "mjpeg")
SIZES = ((64, 48), (96, 64))
FRAMES = (12, 20)
COUNT = len(CODECS) * len(SIZES) * len(FRAMES)  # 16: every combination once
STREAM_CODEC = {"h264": "h264", "vp9": "vp9", "vp8": "vp8", "mjpeg": "mjpeg", "mpeg4": "mpeg4"}


def _gen(out, seed=7, **kw):
    kw = {"codecs": CODECS, "sizes": SIZES, "num_frames": FRAMES, **kw}
    return synthetic.make_videos(out, COUNT, seed=seed, **kw)


def _probe(path):
    """(codec name, width, height, decoded frame count) of the first video stream."""
    with av.open(str(path)) as c:
        cc = c.streams.video[0].codec_context
        n = sum(1 for _ in c.decode(video=0))
        return cc.name, cc.width, cc.height, n


@pytest.fixture(scope="module")
def clip_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("clips_a")
    return out, _gen(out)


def test_every_combination_decodes_as_planned(clip_set):
    out, paths = clip_set
    assert len(paths) == COUNT
    seen = set()
    for i, p in enumerate(paths):
        codec, (w, h), t = synthetic.clip_plan(i, CODECS, SIZES, FRAMES)
        seen.add((codec, (w, h), t))
        assert p == out / f"{i:05d}_{codec}_{w}x{h}.{synthetic.CODECS[codec].ext}" and p.is_file()
        assert _probe(p) == (STREAM_CODEC[codec], w, h, t), p.name
    assert len(seen) == COUNT
    assert {p.suffix for p in paths} == {".mp4", ".webm", ".avi"}


def test_generation_is_deterministic(clip_set, tmp_path):
    _, first = clip_set
    again = _gen(tmp_path)
    for a, b in zip(first, again):
        assert a.name == b.name
        assert np.array_equal(synthetic.decode_frames(a), synthetic.decode_frames(b)), a.name
        assert a.read_bytes() == b.read_bytes(), a.name  # muxing is bit-exact


def test_seed_and_index_change_content():
    base = synthetic.render_clip(0, 0, 64, 48, 4)
    assert np.array_equal(base, synthetic.render_clip(0, 0, 64, 48, 4))
    assert not np.array_equal(base, synthetic.render_clip(1, 0, 64, 48, 4))
    assert not np.array_equal(base, synthetic.render_clip(0, 1, 64, 48, 4))
    # a clip's pixels do not depend on how long it is
    assert np.array_equal(base, synthetic.render_clip(0, 0, 64, 48, 9)[:4])


def test_flat_style_is_smooth_and_deterministic():
    """The demo style: flat objects over a gradient, so almost all of a 16-pixel patch is one colour."""
    flat = synthetic.render_clip(0, 0, 128, 128, 8, style="flat")
    assert np.array_equal(flat, synthetic.render_clip(0, 0, 128, 128, 8, style="flat"))
    textured = synthetic.render_clip(0, 0, 128, 128, 8)
    def within_patch_std(x):
        return x.reshape(8, 8, 16, 8, 16, 3).astype(np.float32).std(axis=(2, 4)).mean()
    assert within_patch_std(flat) < 0.8 * within_patch_std(textured)  # measured: 13.8 vs 21.1
    with pytest.raises(ValueError, match="style 'noisy'"):
        synthetic.render_clip(0, 0, 64, 48, 4, style="noisy")


@pytest.mark.parametrize("index", range(6))
def test_objects_move(index):
    frames = synthetic.render_clip(3, index, 160, 120, 24).astype(np.int16)
    assert frames.shape == (24, 120, 160, 3) and frames.std() > 20  # textured, not flat
    step = np.abs(frames[1:] - frames[:-1]).max(axis=-1)  # [23, H, W]
    changed = (step > 12).mean(axis=(1, 2))  # fraction of pixels that change clearly, per step
    assert (changed > 0.005).all(), changed  # something moves at every step...
    assert (np.abs(frames[12] - frames[0]).max(axis=-1) > 12).mean() > 0.03  # ...and travels


def test_objects_alone_move(monkeypatch):
    """With a flat background every change between frames comes from the objects."""
    monkeypatch.setattr(synthetic, "_background", lambda rng, h, w: np.full((h, w, 3), 0.5, np.float32))
    for index in range(6):
        frames = synthetic.render_clip(3, index, 160, 120, 24).astype(np.int16)
        assert (np.abs(frames[1:] - frames[:-1]).max(axis=-1) > 12).mean(axis=(1, 2)).min() > 0.002
        assert (np.abs(frames[12] - frames[0]).max(axis=-1) > 12).mean() > 0.02


def test_motion_survives_encoding(clip_set):
    _, paths = clip_set
    for p in paths:
        d = synthetic.decode_frames(p).astype(np.int16)
        assert np.abs(d[-1] - d[0]).mean() > 2.0, p.name


def test_list_file_official_format(clip_set):
    out, paths = clip_set
    lines = (out / "train.csv").read_text().splitlines()
    assert len(lines) == len(paths)
    for line, p in zip(lines, paths):
        fields = line.split(" ")  # the official reader splits on single spaces
        assert len(fields) == 3 and fields[1:] == ["0", "-1"], line
        assert os.path.isabs(fields[0]) and Path(fields[0]) == p.resolve()
        assert os.path.isfile(os.path.join("/any/data_root", fields[0]))  # absolute paths ignore data_root


def test_relative_list_and_defaults(tmp_path):
    paths = synthetic.make_videos(tmp_path, 2, list_paths="relative", list_name="list.txt")
    assert [p.name for p in paths] == ["00000_h264_160x120.mp4", "00001_vp9_160x120.webm"]
    assert [_probe(p) for p in paths] == [("h264", 160, 120, 48), ("vp9", 160, 120, 48)]
    assert (tmp_path / "list.txt").read_text() == "00000_h264_160x120.mp4 0 -1\n00001_vp9_160x120.webm 0 -1\n"
    assert not (tmp_path / "train.csv").exists()


def test_no_list_and_bad_arguments(tmp_path):
    synthetic.make_videos(tmp_path, 1, sizes=((32, 32),), num_frames=2, write_list=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000_h264_32x32.mp4"]
    with pytest.raises(ValueError, match="unknown codec"):
        synthetic.make_videos(tmp_path, 1, codecs=("hevc",))
    with pytest.raises(ValueError, match="even"):
        synthetic.make_videos(tmp_path, 1, sizes=((33, 32),), num_frames=2)


def test_bad_files(tmp_path):
    bad = synthetic.make_bad_files(tmp_path, num_frames=24)
    assert set(bad) == {"missing", "empty", "truncated", "truncated_faststart", "random_bytes", "text",
                        "too_short", "unsupported_codec"}
    assert not bad["missing"].exists()
    assert bad["empty"].stat().st_size == 0
    for key in ("missing", "empty", "truncated", "random_bytes", "text"):
        with pytest.raises((OSError, av.error.FFmpegError)):  # cannot even be opened
            synthetic.decode_frames(bad[key])
    assert bad["text"].read_text().startswith("this is not a video")
    assert bad["random_bytes"].stat().st_size == 4096

    # faststart: the header opens and promises 24 frames, but only a part of them decode
    with av.open(str(bad["truncated_faststart"])) as c:
        assert c.streams.video[0].frames == 24
        decoded = 0
        try:
            for _ in c.decode(video=0):
                decoded += 1
        except av.error.FFmpegError:  # this FFmpeg raises InvalidDataError at the cut
            pass
        assert 0 < decoded < 24

    assert _probe(bad["too_short"]) == ("h264", 160, 120, 3)
    assert bad["unsupported_codec"].suffix == ".avi"
    assert _probe(bad["unsupported_codec"]) == ("mpeg4", 160, 120, 24)


def test_cli(tmp_path, capsys):
    rc = make_videos_main(["--out", str(tmp_path), "--count", "3", "--seed", "5", "--codecs", "vp8", "mjpeg",
                           "--sizes", "64x48", "--frames", "6", "--relative_paths", "--bad"])
    assert rc == 0
    printed = capsys.readouterr().out
    names = ["00000_vp8_64x48.webm", "00001_mjpeg_64x48.avi", "00002_vp8_64x48.webm"]
    for name in names:
        assert name in printed and _probe(tmp_path / name)[3] == 6
    assert (tmp_path / "train.csv").read_text().splitlines() == [f"{n} 0 -1" for n in names]
    assert "bad: truncated" in printed and (tmp_path / "bad" / "bad_empty.mp4").exists()
    assert make_videos_main(["--out", str(tmp_path), "--count", "1", "--sizes", "33x10"]) == 2
    assert "--sizes '33x10' is invalid: width and height must be positive and even" in capsys.readouterr().err


def test_cli_flags_take_one_or_more_values():
    from vmae2.cli import build_parser
    from vmae2.data.make_videos import MAKE_VIDEOS

    parser = build_parser(MAKE_VIDEOS)
    args = parser.parse_args(["--codecs", "vp8", "mjpeg", "--list_name", "a.csv", "--no_list", "--frames=6",
                              "--sizes", "64x48", "--bad"])
    assert (args.codecs, args.list_name, args.no_list, args.frames, args.sizes, args.bad) == (
        "vp8 mjpeg", "a.csv", True, "6", "64x48", True)
    with pytest.raises(SystemExit):  # one spelling, as every command: a dashed one is a typo with a suggestion
        parser.parse_args(["--list-name", "a.csv"])
