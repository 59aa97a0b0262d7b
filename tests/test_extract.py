"""Feature extraction (``vmae2.features``, ``python -m vmae2.extract``): the official per-window procedure's numbers,
window layout, weights from anywhere, bad videos, and resume after ``kill -9``."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("av", reason="PyAV makes and decodes the videos")

from oracle.extract import official_extract, official_starts, official_transform  # noqa: E402
from oracle.tolerances import assert_close_fp  # noqa: E402
from vmae2.data.decode import BadVideo  # noqa: E402
from vmae2.data.synthetic import decode_frames, make_bad_files, make_videos  # noqa: E402
from vmae2.extract import main  # noqa: E402
from vmae2.features import embed_clips, extract, preprocess, window_starts  # noqa: E402
from vmae2.models import create_model  # noqa: E402
from vmae2.weights import load_feature_weights  # noqa: E402

SIZE = 64  # --input_size of the tests: a tiny ViT at 64 px keeps each run under seconds


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return create_model("vit_tiny_patch16_224", img_size=SIZE, **kw).eval()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Three H.264 clips of 61, 40 and 30 frames (61: not a multiple of the stride 4), keyframe every 25."""
    root = tmp_path_factory.mktemp("videos")
    return make_videos(root, 3, sizes=((96, 64),), num_frames=(61, 40, 30), codecs=("h264",))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """An official-style fine-tuned checkpoint: 5 classes, keys under ``model`` with a ``module.`` prefix."""
    path = tmp_path_factory.mktemp("weights") / "ft.pth"
    torch.save({"model": {"module." + k: v for k, v in _model(num_classes=5).state_dict().items()}}, path)
    return path


def _cli(args, out):
    return [sys.executable, "-m", "vmae2.extract", "--model", "vit_tiny_patch16_224", "--input_size", str(SIZE),
            "--output_dir", str(out), *map(str, args)]


@pytest.mark.parametrize("n, window, stride, frame_stride, expected", [
    (61, 16, 4, 1, list(range(0, 46, 4))), (16, 16, 4, 1, [0]), (15, 16, 4, 1, []), (0, 16, 4, 1, []),
    (64, 16, 16, 1, [0, 16, 32, 48]), (40, 8, 4, 2, [0, 4, 8, 12, 16, 20, 24]), (20, 4, 100, 1, [0])])
def test_window_starts(n, window, stride, frame_stride, expected):
    assert list(window_starts(n, window, stride, frame_stride)) == expected
    if frame_stride == 1 and window == 16:
        assert list(official_starts(n, stride)) == expected


def test_frame_by_frame_preprocessing_equals_the_official_window_transform(videos):
    """The official Resize runs on [C, T, H, W] with T as channels: frames are independent, chunks give equal bits."""
    frames = decode_frames(videos[0])[:16]
    whole = official_transform(frames, SIZE)
    for chunk in (1, 3, 16):
        parts = torch.cat([preprocess(torch.from_numpy(frames[i:i + chunk]), SIZE) for i in range(0, 16, chunk)], 1)
        assert torch.equal(parts, whole)


def test_cli_thumos14_equals_the_official_per_window_procedure(videos, weights, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p} 0 -1\n" for p in videos))
    assert main(["--preset", "thumos14", "--model", "vit_tiny_patch16_224", "--input_size", str(SIZE),
                 "--weights", str(weights), "--data_path", str(listing), "--output_dir", str(tmp_path / "out"),
                 "--batch_size", "5", "--num_workers", "1"]) == 0
    model = _model(num_classes=0)
    load_feature_weights(model, str(weights))
    for path in videos:
        got = np.load(tmp_path / "out" / f"{path.stem}.npy")
        expected = official_extract(model, path, step=4, size=SIZE)
        assert got.dtype == np.float32 and got.shape == expected.shape == (len(official_starts(
            len(decode_frames(path)), 4)), 192)
        assert_close_fp(torch.from_numpy(got), torch.from_numpy(expected))


def test_api_paths_tensors_presets_and_tokens(videos):
    model = _model(num_classes=0)
    frames = decode_frames(videos[0])  # 61 frames
    from_path = extract(model, videos[0], input_size=SIZE, batch_size=3)
    assert np.array_equal(extract(model, torch.from_numpy(frames), input_size=SIZE, batch_size=3), from_path)
    fineaction = extract(model, frames, stride=16, input_size=SIZE)
    assert fineaction.shape == (3, 192) and np.array_equal(fineaction, from_path[::4])
    tokens = extract(model, frames[:20], input_size=SIZE, tokens=True)
    assert tokens.shape == (2, 8 * 4 * 4, 192)
    clips = torch.stack([preprocess(torch.from_numpy(frames[s:s + 16]), SIZE) for s in (0, 4)])
    assert_close_fp(torch.from_numpy(tokens), embed_clips(model, clips, tokens=True))
    with pytest.raises(BadVideo, match="too_short"):
        extract(model, frames[:15], input_size=SIZE)


@pytest.mark.parametrize("prefix, wrapper", [("", None), ("model.", None), ("module.", "model"),
                                             ("backbone.", "state_dict")])
@pytest.mark.parametrize("kind", ["finetuned", "pretraining"])
def test_weights_from_official_checkpoints_under_any_prefix(kind, prefix, wrapper):
    if kind == "finetuned":
        source = _model(seed=1, num_classes=710)
    else:
        torch.manual_seed(1)
        source = create_model("pretrain_videomae_tiny_patch16_224", img_size=SIZE)
    state = {prefix + k: v for k, v in source.state_dict().items()}
    model = _model(num_classes=0)
    how = load_feature_weights(model, {wrapper: state} if wrapper else state)
    assert f"key prefix {prefix.replace('module.', '')!r}" in how  # DDP's module. goes first, as for every load
    encoder = source if kind == "finetuned" else source.encoder
    assert torch.equal(model.blocks[-1].mlp.fc2.weight, encoder.blocks[-1].mlp.fc2.weight)
    norm = source.fc_norm if kind == "finetuned" else source.encoder.norm
    assert torch.equal(model.fc_norm.bias, norm.bias)


def test_weights_mismatch_names_the_closest_prefix_and_counts():
    state = {"model." + k: v for k, v in _model(num_classes=0).state_dict().items() if not k.startswith("blocks.0.")}
    state["model.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"closest key prefix 'model\.' leaves 13 missing and 1 unexpected"):
        load_feature_weights(_model(num_classes=0), state)


def test_bad_videos_are_listed_and_every_good_video_written(videos, weights, tmp_path):
    bad = make_bad_files(tmp_path / "bad", size=(64, 48), num_frames=40)
    three = {k: bad[k] for k in ("truncated_faststart", "missing", "empty")}
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p} 0 -1\n" for p in [*three.values(), *videos]))
    result = subprocess.run(_cli(["--weights", weights, "--data_path", listing], tmp_path / "out"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    rows = [line.split("\t") for line in (tmp_path / "out" / "failed.tsv").read_text().splitlines()[1:]]
    assert {row[0]: row[1] for row in rows} == {str(three["truncated_faststart"]): "truncated",
                                                str(three["missing"]): "missing", str(three["empty"]): "empty"}
    for path in three.values():
        assert f"skipping bad video {path}" in result.stderr
    # the list spans two folders: each video's features under its folder's name
    assert _features(tmp_path / "out") == sorted(f"{p.parent.name}/{p.stem}.npy" for p in videos)


def test_kill_9_then_rerun_gives_the_uninterrupted_files(weights, tmp_path):
    vids = make_videos(tmp_path / "v", 6, sizes=((96, 64),), num_frames=(61,), codecs=("h264",))
    args = ["--weights", weights, "--data_path", tmp_path / "v", "--batch_size", "2", "--num_workers", "0",
            "--input_size", "112"]
    subprocess.run(_cli(args, tmp_path / "a"), check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(_cli(args, tmp_path / "b"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((tmp_path / "b").glob("*.npy")) and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = list((tmp_path / "b").glob("*.npy"))
    assert 1 <= len(partial) < len(vids)  # killed mid-run
    for path in partial:
        np.load(path)  # every file there is whole
    stale = tmp_path / "b" / f".{vids[-1].stem}.npy.left-by-a-kill.tmp"  # what atomic_write leaves when killed
    stale.write_bytes(b"partial")
    (tmp_path / "b" / ".manifest.json.left-by-a-kill.tmp").write_bytes(b"partial")  # killed mid-manifest
    subprocess.run(_cli(args, tmp_path / "b"), check=True, capture_output=True, timeout=300)
    assert not list((tmp_path / "b").glob("*.tmp"))  # the rerun cleared what the killed run left
    for path in vids:
        name = f"{path.stem}.npy"
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes()


def test_torchrun_shards_the_list_and_rank_0_merges_the_manifests(videos, weights, tmp_path):
    missing = tmp_path / "missing.mp4"
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p} 0 -1\n" for p in [missing, *videos]))
    args = ["--weights", weights, "--data_path", listing, "--num_workers", "0"]
    subprocess.run(_cli(args, tmp_path / "one"), check=True, capture_output=True, timeout=300)
    command = _cli(args, tmp_path / "two")[1:]  # -m vmae2.extract ...
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                             *command], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = tmp_path / "one", tmp_path / "two"
    assert sorted(p.name for p in two.glob("*.npy")) == sorted(p.name for p in one.glob("*.npy"))
    for path in one.glob("*.npy"):
        assert_close_fp(torch.from_numpy(np.load(two / path.name)), torch.from_numpy(np.load(path)))
    for rank in (0, 1):  # each rank's own files, as it wrote them
        assert (two / f"manifest.rank{rank}.json").exists()
    merged, single = (json.loads((d / "manifest.json").read_text()) for d in (two, one))
    assert (merged.pop("world_size"), single.pop("world_size")) == (2, 1)
    assert merged == single  # every rank's videos and window counts, as the one-process run lists them
    assert (two / "failed.tsv").read_text() == (one / "failed.tsv").read_text()


def test_bf16_on_cpu_runs_in_bf16_and_stays_within_bf16_rounding_of_fp32(videos):
    model = _model(num_classes=0)
    fp32 = torch.from_numpy(extract(model, videos[0], input_size=SIZE))
    bf16 = torch.from_numpy(extract(model, videos[0], input_size=SIZE, precision="bf16"))
    rel = ((bf16 - fp32).norm() / fp32.norm()).item()
    # bf16 keeps 8 significant bits (a rounding step of 2**-8 = 3.9e-3 relative); the rounding of 12 blocks' matmul
    # inputs adds up to a few steps, not to a different feature. Nonzero: the matmuls really ran in bf16.
    assert 0 < rel < 4 * 2 ** -8, rel


# -- inputs: the training lists, class folders, paths with spaces; runs into one folder; exit codes ----------------

def _tiny_videos(folder, count, start=0):
    """``count`` 12-frame 64x48 H.264 clips in ``folder`` (4-frame windows every 4 frames: 3 windows each)."""
    return make_videos(folder, count, start=start, sizes=((64, 48),), num_frames=(12,), codecs=("h264",),
                       write_list=False)


def _extract(weights, data_path, out, *args, geometry=True):
    """``python -m vmae2.extract`` in this process: 4-frame windows of the tiny model unless ``geometry`` is off."""
    fixed = ["--model", "vit_tiny_patch16_224", "--window", "4", "--stride", "4", "--input_size", str(SIZE)]
    return main([*(fixed if geometry else []), "--weights", str(weights), "--data_path", str(data_path),
                 "--output_dir", str(out), "--num_workers", "0", "--batch_size", "4", *map(str, args)])


def _features(out):
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy"))


def _failed(out):
    return [line.split("\t")[:2] for line in (out / "failed.tsv").read_text(encoding="utf-8").splitlines()[1:]]


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    """Class folders holding clips of one file name (``a/00000_...`` and ``b/00000_...``), one a level deeper."""
    root = tmp_path_factory.mktemp("classes")
    return {"a": _tiny_videos(root / "a", 2),
            "b": [*_tiny_videos(root / "b", 1), *_tiny_videos(root / "b" / "sub", 1, start=2)]}


def _mirrored(classes):
    root = classes["a"][0].parent.parent
    return sorted(p.relative_to(root).with_suffix(".npy").as_posix() for videos in classes.values() for p in videos)


def test_a_folder_of_class_folders_is_searched_recursively_and_mirrored(classes, weights, tmp_path, capsys):
    assert _extract(weights, classes["a"][0].parent.parent, tmp_path / "out") == 0
    assert _features(tmp_path / "out") == _mirrored(classes) == [
        "a/00000_h264_64x48.npy", "a/00001_h264_64x48.npy", "b/00000_h264_64x48.npy", "b/sub/00002_h264_64x48.npy"]
    videos = json.loads((tmp_path / "out" / "manifest.json").read_text())["videos"]
    assert videos["b/00000_h264_64x48"] == {"path": str(classes["b"][0]), "windows": 3}
    assert "4 videos extracted" in capsys.readouterr().out


def test_the_lists_of_make_lists_and_every_training_list_format_are_extracted_fully(classes, weights, tmp_path):
    from vmae2.data.make_lists import write_lists

    lists = write_lists(classes["a"][0].parent.parent, tmp_path / "lists", val_fraction=0)
    everything = [p for videos in classes.values() for p in videos]
    named = tmp_path / "named.csv"  # a header, commas, class names as labels
    named.write_text("path,label\n" + "".join(f"{p},{c.upper()}\n" for c, vs in classes.items() for p in vs))
    relative = tmp_path / "relative.txt"  # paths relative to --data_root, blanks, a comment
    relative.write_text("# clips\n" + "".join(f"{p.relative_to(p.parent.parent)} 0 -1\n" for p in classes["a"]))
    for name, listing in [("pretrain", lists["pretrain"]), ("train", lists["train"]), ("named", named)]:
        assert _extract(weights, listing, tmp_path / name) == 0, name
        assert _features(tmp_path / name) == _mirrored(classes), name
        listed = json.loads((tmp_path / name / "manifest.json").read_text())["videos"]
        assert sorted(v["path"] for v in listed.values()) == sorted(map(str, everything)), name
        assert not (tmp_path / name / "failed.tsv").exists()
    assert _extract(weights, relative, tmp_path / "relative", "--data_root", classes["a"][0].parent.parent) == 0
    assert _features(tmp_path / "relative") == ["00000_h264_64x48.npy", "00001_h264_64x48.npy"]


def test_paths_with_spaces_and_non_ascii_from_a_plain_list_and_make_lists(weights, tmp_path):
    from vmae2.data.make_lists import write_lists

    root = tmp_path / "mes vidéos"
    made = _tiny_videos(root / "classe à 1", 1) + _tiny_videos(root / "クラス 2", 1, 1)
    videos = [p.rename(p.with_name(name)) for p, name in zip(made, ["clip un.mp4", "動画 2.mp4"])]
    missing = root / "classe à 1" / "absent é.mp4"
    plain = tmp_path / "plain.txt"  # one path a line, spaces inside
    plain.write_text("".join(f"{p}\n" for p in [*videos, missing]), encoding="utf-8")
    lists = write_lists(root, tmp_path / "lists", val_fraction=0)  # commas: the paths hold blanks
    for name, listing in [("plain", plain), ("train", lists["train"])]:
        assert _extract(weights, listing, tmp_path / name) == 0, name
        assert _features(tmp_path / name) == ["classe à 1/clip un.npy", "クラス 2/動画 2.npy"], name
    assert _failed(tmp_path / "plain") == [[str(missing), "missing"]]


def test_a_vmae2_runs_normalisation_and_sampling_rate_are_taken_and_a_flag_overriding_one_warns(videos, tmp_path,
                                                                                                 capsys):
    from vmae2.cli import parse_config
    from vmae2.extract import EXTRACT
    from vmae2.training import rundir

    rundir.write({"model": "pretrain_videomae_tiny_patch16_224", "num_frames": 4, "input_size": SIZE,
                  "sampling_rate": 3, "tubelet_size": 2}, "train", tmp_path / "run")
    weights = tmp_path / "run" / "encoder.pth"
    torch.save(_model(seed=2, num_classes=0).state_dict(), weights)
    cfg = parse_config(["--weights", str(weights), "--data_path", str(videos[0])], EXTRACT)
    assert (cfg.model, cfg.window, cfg.input_size, cfg.frame_stride, cfg.normalize) == (
        "vit_tiny_patch16_224", 4, SIZE, 3, True)
    capsys.readouterr()
    cfg = parse_config(["--weights", str(weights), "--data_path", str(videos[0]), "--normalize", "false",
                        "--frame_stride", "1"], EXTRACT)
    assert (cfg.frame_stride, cfg.normalize) == (1, False)
    err = capsys.readouterr().err
    assert "--normalize False differs from the run's True" in err and "--frame_stride 1 differs from the run's 3" in err
    listing = tmp_path / "list.txt"
    listing.write_text(f"{videos[1]}\n")
    assert _extract(weights, listing, tmp_path / "out", "--stride", "4", geometry=False) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["options"]["frame_stride"], manifest["options"]["normalize"]) == (3, True)
    model = _model(seed=2, num_classes=0, num_frames=4)
    expected = extract(model, videos[1], window=4, stride=4, frame_stride=3, input_size=SIZE, normalize=True)
    got = np.load(tmp_path / "out" / f"{videos[1].stem}.npy")
    assert got.shape == expected.shape == (len(window_starts(40, 4, 4, 3)), 192)
    assert_close_fp(torch.from_numpy(got), torch.from_numpy(expected))


def test_runs_into_one_folder_keep_every_runs_videos_and_failures(weights, tmp_path, capsys):
    one, two = _tiny_videos(tmp_path / "v", 2)
    gone = [tmp_path / "v" / f"gone{i}.mp4" for i in (1, 2)]
    out = tmp_path / "out"
    for i, video in enumerate((one, two)):
        (tmp_path / f"list{i}.txt").write_text(f"{video} 0 -1\n{gone[i]} 0 -1\n")
        assert _extract(weights, tmp_path / f"list{i}.txt", out) == 0
    listed = json.loads((out / "manifest.json").read_text())["videos"]
    assert sorted(v["path"] for v in listed.values()) == [str(one), str(two)]
    assert _failed(out) == [[str(gone[0]), "missing"], [str(gone[1]), "missing"]]
    shutil.copy(one, gone[0])  # a failed video made good: retried, extracted, no longer listed as failed
    assert _extract(weights, tmp_path / "list0.txt", out) == 0
    assert _extract(weights, tmp_path / "list1.txt", out) == 0  # fails again: listed once
    listed = json.loads((out / "manifest.json").read_text())["videos"]
    assert sorted(v["path"] for v in listed.values()) == sorted([str(one), str(two), str(gone[0])])
    assert _failed(out) == [[str(gone[1]), "missing"]]
    capsys.readouterr()
    assert _extract(weights, tmp_path / "list0.txt", out) == 0
    assert "all 2 videos were extracted" in capsys.readouterr().out


def test_the_exit_code_is_nonzero_when_nothing_is_extracted(weights, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _extract(weights, tmp_path / "empty", tmp_path / "out") == 2
    assert "holds no videos" in capsys.readouterr().err
    short = make_videos(tmp_path / "v", 1, sizes=((64, 48),), num_frames=(3,), codecs=("h264",), write_list=False)
    bad = make_bad_files(tmp_path / "bad", size=(64, 48), num_frames=12)
    listing = tmp_path / "bad.txt"
    listing.write_text(f"{short[0]}\n{bad['empty']}\n{bad['missing']}\n")
    assert _extract(weights, listing, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert f"error: no video of --data_path {listing} was extracted: all 3 failed" in err
    assert sorted(r for _, r in _failed(tmp_path / "out")) == ["empty", "missing", "too_short"]
    listing.write_text(f"{bad['missing']}\n")
    assert _extract(weights, listing, tmp_path / "out") == 2
    assert "none of the first 1 videos exists" in capsys.readouterr().err
