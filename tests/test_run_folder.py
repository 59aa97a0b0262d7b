"""Geometry that travels with the weights (config.json), defaults that fit the data, a CLI that teaches."""
import json
import os
import subprocess
import sys

import pytest

import vmae2.config
from vmae2 import rundir
from vmae2.config import PRETRAIN, build_parser, cpu_cores, parse_config
from vmae2.extract import EXTRACT
from vmae2.finetune_config import EVALUATE, FINETUNE, PREDICT


def _finetune_run(folder, **extra):
    """A fine-tuning run folder as python -m vmae2.finetune leaves it (config.json, weights, lists)."""
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "test.csv").write_text("a.mp4 0\n")
    (folder / "classes.txt").write_text("blue\nred\nnone\n")
    config = {"model": "vit_tiny_patch16_224", "nb_classes": 3, "num_frames": 8, "input_size": 64,
              "sampling_rate": 2, "tubelet_size": 2, "short_side_size": 64, "sparse_sample": False,
              "test_num_segment": 2, "test_num_crop": 2, "class_names": str(folder / "classes.txt"),
              "test_data_path": str(folder / "test.csv"), "data_root": "", **extra}
    rundir.write(config, "finetune", folder)
    return folder


# -- 2. geometry travels with the weights -------------------------------------------------------------------

def test_evaluate_run_folder_needs_nothing_else(tmp_path):
    run = _finetune_run(tmp_path / "ft")
    cfg = parse_config(["--run", str(run)], EVALUATE)
    assert (cfg.model, cfg.nb_classes, cfg.num_frames, cfg.input_size, cfg.sampling_rate, cfg.short_side_size) == (
        "vit_tiny_patch16_224", 3, 8, 64, 2, 64)
    assert (cfg.test_num_segment, cfg.test_num_crop) == (2, 2)
    assert cfg.weights == str(run / "model.safetensors") and cfg.data_path == str(run / "test.csv")
    assert cfg.class_names == str(run / "classes.txt") and cfg.output_dir == str(run / "evaluate")


def test_weights_beside_a_config_json_carry_their_geometry_and_a_contradicting_flag_warns(tmp_path, capsys):
    run = _finetune_run(tmp_path / "ft")
    args = ["--weights", str(run / "model.safetensors"), "--data_path", str(run / "test.csv")]
    cfg = parse_config(args, EVALUATE)  # was: 16 frames x 224 px, the defaults, silently
    assert (cfg.num_frames, cfg.input_size, cfg.short_side_size, cfg.nb_classes) == (8, 64, 64, 3)
    assert capsys.readouterr().err == ""
    cfg = parse_config(args + ["--short_side_size", "128"], EVALUATE)
    assert cfg.short_side_size == 128 and cfg.input_size == 64
    err = capsys.readouterr().err
    assert "warning: --short_side_size 128 differs from the run's 64" in err and "config.json" in err
    # predict reads the same run
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    cfg = parse_config(["--run", str(run), str(video)], PREDICT)
    assert cfg.videos == [str(video)] and cfg.num_frames == 8 and cfg.weights == str(run / "model.safetensors")


def test_run_folder_errors_say_what_to_give(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json written by vmae2 in it; give the --output_dir of a"):
        parse_config(["--run", str(tmp_path / "empty")], EVALUATE)
    rundir.write({"model": "pretrain_videomae_tiny_patch16_224", "num_frames": 4, "input_size": 128}, "train",
                 tmp_path / "pre")
    with pytest.raises(ValueError, match="is a pretraining run.*python -m vmae2.finetune --init"):
        parse_config(["--run", str(tmp_path / "pre")], EVALUATE)
    with pytest.raises(ValueError, match=r"--weights is required \(or --run DIR"):
        parse_config(["--model", "vit_tiny_patch16_224", "--nb_classes", "2"], EVALUATE)
    # another tool's config.json (no vmae2 key) is not read
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model": "x", "num_frames": 3}))
    assert rundir.read(tmp_path / "hf" / "model.safetensors") is None


def test_finetune_init_and_extract_take_the_pretraining_geometry(tmp_path, capsys):
    rundir.write({"model": "pretrain_videomae_tiny_patch16_224", "num_frames": 4, "input_size": 128,
                  "sampling_rate": 4, "tubelet_size": 2}, "train", tmp_path / "pre")
    weights = tmp_path / "pre" / "model.safetensors"
    weights.write_bytes(b"")
    names = tmp_path / "classes.txt"
    names.write_text("a\nb\nc\n")
    cfg = parse_config(["--preset", "demo", "--init", str(weights), "--class_names", str(names)], FINETUNE)
    assert (cfg.model, cfg.num_frames, cfg.input_size, cfg.short_side_size, cfg.nb_classes) == (
        "vit_tiny_patch16_224", 4, 128, 128, 3)
    cfg = parse_config(["--preset", "demo", "--init", str(weights), "--num_frames", "8"], FINETUNE)
    assert cfg.num_frames == 8 and "--num_frames 8 differs from the run's 4" in capsys.readouterr().err
    assert cfg.pretrain_grid() == (2, 8, 8)  # the table of the 4 x 128 px pretraining, resampled onto 8 frames
    cfg = parse_config(["--weights", str(weights), "--data_path", str(names)], EXTRACT)
    assert (cfg.model, cfg.window, cfg.input_size) == ("vit_tiny_patch16_224", 4, 128)


def test_resume_at_another_geometry_is_refused_and_small_videos_are_noted(tmp_path):
    pytest.importorskip("av")
    from vmae2.data.synthetic import make_videos

    make_videos(tmp_path / "v", 2, seed=0, sizes=((64, 64),), num_frames=(16,))
    common = [sys.executable, "-m", "vmae2.train", "--preset", "small_data", "--data_path",
              str(tmp_path / "v" / "train.csv"), "--batch_size", "2", "--num_sample", "1", "--num_workers", "0",
              "--max_steps", "1", "--output_dir", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(common + ["--input_size", "96"], capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "is 64x64: its frames are upscaled to --input_size 96; --input_size 64 would fit" in first.stdout
    again = subprocess.run(common + ["--input_size", "64", "--max_steps", "2"], capture_output=True, text=True,
                           env=env, timeout=300)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "written with --input_size 96, at --input_size 64; pass --input_size 96" in again.stderr
    assert json.loads((tmp_path / "out" / "config.json").read_text())["input_size"] == 96  # the run's, unchanged


# -- 4. defaults that fit the data ----------------------------------------------------------------------------

def test_small_data_without_a_gpu_gets_the_small_data_preset(tmp_path, monkeypatch, capsys):
    listing = tmp_path / "l.txt"
    listing.write_text("a.mp4 0 -1\n" * 12)
    monkeypatch.setattr(vmae2.config, "gpu_visible", lambda: False)
    cfg = parse_config(["--data_path", str(listing)])
    assert cfg.model == "pretrain_videomae_tiny_patch16_224" and cfg.output_dir == "output/pretrain"
    err = capsys.readouterr().err
    assert "12 videos and no GPU, so --preset small_data" in err and "official_defaults" in err
    listing.write_text("a.mp4 0 -1\n" * 1000)  # a real data set: the official recipe, said as such
    assert parse_config(["--data_path", str(listing)]).model == "pretrain_videomae_base_patch16_224"
    assert "1000 videos and no GPU, so --preset official_defaults" in capsys.readouterr().err


def test_relative_paths_without_data_root_and_a_batch_too_large_are_explained(tmp_path, monkeypatch, capsys):
    pytest.importorskip("av")
    from vmae2.data.synthetic import make_videos
    from vmae2.train import main

    make_videos(tmp_path / "v", 2, seed=0, sizes=((64, 64),), num_frames=(16,), list_paths="relative")
    monkeypatch.chdir(tmp_path)
    args = ["--preset", "small_data", "--data_path", "v/train.csv", "--num_workers", "0", "--output_dir", "out"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "none of the first 2 videos exists" in err and "pass --data_root FOLDER" in err
    assert main(args + ["--data_root", "v", "--batch_size", "64"]) == 2
    assert "--batch_size 64 is too large for this data" in capsys.readouterr().err


# -- 5. help and start-up -------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [PRETRAIN, FINETUNE, EVALUATE, PREDICT, EXTRACT])
def test_help_shows_every_default_once(command):
    parser = build_parser(command)
    for action in parser._actions:
        if action.dest not in ("help", "config"):
            assert action.help.count("default") >= 1 and action.help.count("(default:") <= 1, action.dest
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["device"].endswith("(default: auto)") and helps["model"].count("(default:") == 1
    if command is PRETRAIN:
        assert helps["weight_decay"].endswith("(default: 0.05)") and helps["preset"].count("(default:") == 1


def test_a_mistyped_option_gets_a_suggestion_not_the_usage(capsys):
    from vmae2.train import main

    with pytest.raises(SystemExit) as exc:
        main(["--lrr", "0.1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "unknown option --lrr: did you mean --lr?" in err
    assert len(err.strip().splitlines()) == 2 and "usage" not in err


def test_worker_default_follows_the_cores():
    cfg = parse_config(["--preset", "official_defaults"])
    assert cfg.num_workers == min(10, cpu_cores())
    run = ["--model", "vit_tiny_patch16_224", "--nb_classes", "2", "--weights", __file__, "--data_path", __file__]
    assert parse_config(run, EVALUATE).num_workers == min(4, cpu_cores())
    assert parse_config(run + ["--num_workers", "7"], EVALUATE).num_workers == 7
