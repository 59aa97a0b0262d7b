"""Geometry that travels with the weights (config.json), defaults that fit the data, a CLI that teaches, and one
rule for run folders: locked while a run writes them, continued only by the same run, never mixed."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
from run_folders import finetune_run_folder

import vmae2.cli
from vmae2.cli import build_parser, cpu_cores, parse_config
from vmae2.evaluate import EVALUATE
from vmae2.extract import EXTRACT
from vmae2.finetune import FINETUNE
from vmae2.predict import PREDICT
from vmae2.train import PRETRAIN
from vmae2.training import rundir

# -- 2. geometry travels with the weights -------------------------------------------------------------------

def test_evaluate_run_folder_needs_nothing_else(tmp_path):
    run = finetune_run_folder(tmp_path / "ft")
    cfg = parse_config(["--run", str(run)], EVALUATE)
    assert (cfg.model, cfg.nb_classes, cfg.num_frames, cfg.input_size, cfg.sampling_rate, cfg.short_side_size) == (
        "vit_tiny_patch16_224", 3, 8, 64, 2, 64)
    assert (cfg.test_num_segment, cfg.test_num_crop) == (2, 2)
    assert cfg.weights == str(run / "model.safetensors") and cfg.data_path == str(run / "test.csv")
    assert cfg.class_names == str(run / "classes.txt") and cfg.output_dir == str(run / "evaluate")


def test_weights_beside_a_config_json_carry_their_geometry_and_a_contradicting_flag_warns(tmp_path, capsys):
    run = finetune_run_folder(tmp_path / "ft")
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
    assert "holds another run" in again.stderr and "--input_size 96 -> 64; --max_steps 1 -> 2" in again.stderr
    assert json.loads((tmp_path / "out" / "config.json").read_text())["input_size"] == 96  # the run's, unchanged


# -- 4. defaults that fit the data ----------------------------------------------------------------------------

def test_small_data_without_a_gpu_gets_the_small_data_preset(tmp_path, monkeypatch, capsys):
    listing = tmp_path / "l.txt"
    listing.write_text("a.mp4 0 -1\n" * 12)
    monkeypatch.setattr(vmae2.cli, "gpu_visible", lambda: False)
    cfg = parse_config(["--data_path", str(listing)], PRETRAIN)
    assert cfg.model == "pretrain_videomae_tiny_patch16_224" and cfg.output_dir == "output/pretrain"
    err = capsys.readouterr().err
    assert "12 videos and no GPU, so --preset small_data" in err and "official_defaults" in err
    listing.write_text("a.mp4 0 -1\n" * 1000)  # a real data set: the official recipe, said as such
    assert parse_config(["--data_path", str(listing)], PRETRAIN).model == "pretrain_videomae_base_patch16_224"
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
    cfg = parse_config(["--preset", "official_defaults"], PRETRAIN)
    assert cfg.num_workers == min(10, cpu_cores())
    run = ["--model", "vit_tiny_patch16_224", "--nb_classes", "2", "--weights", __file__, "--data_path", __file__]
    assert parse_config(run, EVALUATE).num_workers == min(4, cpu_cores())
    assert parse_config(run + ["--num_workers", "7"], EVALUATE).num_workers == 7


# -- 6. one rule for run folders ------------------------------------------------------------------------------

TINY = ["--preset", "demo", "--num_frames", "4", "--input_size", "64", "--batch_size", "2", "--num_sample", "1",
        "--mask_ratio", "0.9", "--num_workers", "0", "--lr", "0.05", "--warmup_steps", "2", "--log_every", "1",
        "--max_steps", "2", "--save_every_steps", "2"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    pytest.importorskip("av")
    from vmae2.data.synthetic import make_videos

    root = tmp_path_factory.mktemp("run_folder_videos")
    make_videos(root, 4, seed=0, sizes=((64, 64),), num_frames=(16,))
    return str(root / "train.csv")


def _train(out, *args) -> int:
    from vmae2.train import main

    return main(TINY + list(args) + ["--output_dir", str(out)])


def _steps(out) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _lock(folder, pid, host=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / rundir.LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                       "command": "python -m vmae2.train", "started": "earlier"}))


def test_a_folder_in_use_is_refused_naming_the_holder(videos, tmp_path, capsys):
    from vmae2.evaluate import main as evaluate
    from vmae2.extract import main as extract

    out = tmp_path / "out"
    _lock(out, os.getpid())  # a live process on this host
    assert _train(out, "--data_path", videos) == 2
    err = capsys.readouterr().err
    assert f"--output_dir {out} is in use by pid {os.getpid()} on {socket.gethostname()} (python -m vmae2.train, " \
           f"started earlier): wait for that run to end, or choose another --output_dir" in err
    assert os.listdir(out) == [rundir.LOCK_FILE]  # nothing written
    run = finetune_run_folder(tmp_path / "ft")
    _lock(run / "evaluate", os.getpid())
    assert evaluate(["--run", str(run)]) == 2 and f"is in use by pid {os.getpid()}" in capsys.readouterr().err
    _lock(tmp_path / "features", os.getpid())
    assert extract(["--weights", str(run / "model.safetensors"), "--data_path", str(run / "test.csv"),
                    "--output_dir", str(tmp_path / "features")]) == 2
    assert f"is in use by pid {os.getpid()}" in capsys.readouterr().err
    _lock(tmp_path / "far", 1, host="another-host")  # cannot be checked: refused, with what to do if it has ended
    with pytest.raises(ValueError, match=r"pid 1 on another-host .* if that run has ended, delete .*run.lock"):
        with rundir.lock(tmp_path / "far", "python -m vmae2.train"):
            pass


def test_a_stale_lock_is_taken_over(videos, tmp_path, capsys):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    out = tmp_path / "out"
    _lock(out, ended.pid)
    assert _train(out, "--data_path", videos) == 0
    err = capsys.readouterr().err
    assert f"note: taking over {out / rundir.LOCK_FILE} from pid {ended.pid} on {socket.gethostname()}" in err
    assert _steps(out) == [1, 2] and not (out / rundir.LOCK_FILE).exists()  # released at the end


def test_a_second_concurrent_run_is_refused_and_steps_are_logged_once(videos, tmp_path, capsys):
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "vmae2.train", *TINY, "--max_steps", "400", "--data_path", videos,
                              "--output_dir", str(out)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    for line in first.stdout:
        if line.startswith("step 2/"):
            break
    assert _train(out, "--data_path", videos) == 2
    assert f"is in use by pid {first.pid} on {socket.gethostname()} (python -m vmae2.train" in capsys.readouterr().err
    first.send_signal(signal.SIGTERM)
    first.stdout.read()
    assert first.wait(timeout=60) == 0
    steps = _steps(out)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2  # each step once


def test_a_used_folder_continues_only_its_own_run(videos, tmp_path, capsys):
    out = tmp_path / "out"
    assert _train(out, "--data_path", videos) == 0
    before = {name: (out / name).read_bytes() for name in ("config.json", "metrics.jsonl", "model.safetensors")}
    checkpoint = out / "checkpoints" / "checkpoint-00000002.pt"
    written = checkpoint.stat().st_mtime_ns
    other = shutil.copy(videos, tmp_path / "other.csv")
    capsys.readouterr()
    assert _train(out, "--data_path", str(other), "--lr", "0.1") == 2
    err = capsys.readouterr().err
    assert f"--output_dir {out} holds another run ({out / 'config.json'})" in err
    assert f"--data_path {videos} -> {other}; --lr 0.05 -> 0.1." in err
    assert "--resume none --overwrite to start a new run there" in err and "another --output_dir" in err
    # the same run, with other logging: finished already, so nothing runs and nothing changes
    assert _train(out, "--data_path", videos, "--log_every", "2") == 0
    printed = capsys.readouterr().out
    assert f"already finished at step 2; nothing to do (outputs in {out})" in printed and "done:" not in printed
    assert {name: (out / name).read_bytes() for name in before} == before
    assert checkpoint.stat().st_mtime_ns == written
    # an explicit checkpoint follows the same rule
    assert _train(tmp_path / "new", "--data_path", videos, "--lr", "0.1", "--resume", str(checkpoint)) == 2
    assert f"--resume {checkpoint} is a checkpoint of another run ({out / 'config.json'})" in capsys.readouterr().err


def test_a_resume_is_recorded_in_config_json(videos, tmp_path):
    out = tmp_path / "out"
    assert _train(out, "--data_path", videos, "--max_steps", "3") == 0
    config = json.loads((out / "config.json").read_text())
    (out / "checkpoints" / "checkpoint-00000003.pt").unlink()  # as if stopped after step 2
    (out / "model.safetensors").unlink()
    assert _train(out, "--data_path", videos, "--max_steps", "3", "--log_every", "2") == 0
    resumed = json.loads((out / "config.json").read_text())
    [resume] = resumed.pop("resumes")
    assert resumed == config  # the run's values as written at its start
    assert resume["step"] == 2 and resume["from"] == str(out / "checkpoints" / "checkpoint-00000002.pt")
    assert resume["options"] == {"log_every": 2} and resume["time"]
    # from a checkpoint into a new folder: its config.json says where the run came from
    new = tmp_path / "new"
    assert _train(new, "--data_path", videos, "--max_steps", "3", "--resume", resume["from"]) == 0
    assert [r["step"] for r in json.loads((new / "config.json").read_text())["resumes"]] == [2]


def test_a_new_run_in_a_used_folder_needs_overwrite_and_moves_the_old_one_aside(videos, tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "out"
    assert _train(out, "--data_path", videos) == 0
    old_weights = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert _train(out, "--data_path", videos, "--resume", "none") == 2
    err = capsys.readouterr().err
    assert f"--output_dir {out} holds a run (config.json, metrics.jsonl, model.safetensors, checkpoints) and " \
           f"--resume none starts a new one: pass --overwrite" in err
    assert _train(out, "--data_path", videos, "--overwrite", "true") == 2
    assert "--overwrite True is invalid: goes with --resume none" in capsys.readouterr().err
    assert _train(out, "--data_path", videos, "--resume", "none", "--overwrite", "true", "--lr", "0.1") == 0
    [aside] = tmp_path.glob("out.replaced-*")
    assert f"--overwrite: moved the run that was in {out} to {aside}" in capsys.readouterr().out
    # the old run, whole, beside the new one
    assert (aside / "model.safetensors").read_bytes() == old_weights
    assert json.loads((aside / "config.json").read_text())["lr"] == 0.05 and _steps(aside) == [1, 2]
    assert [p.name for p in (aside / "checkpoints").iterdir()] == ["checkpoint-00000002.pt"]
    # the new run, alone in its folder
    assert json.loads((out / "config.json").read_text())["lr"] == 0.1 and _steps(out) == [1, 2]
    from vmae2.training.state import Checkpoints

    [checkpoint] = Checkpoints(out, 2).paths()
    assert Checkpoints.load(checkpoint)["config"]["lr"] == 0.1
    assert load_file(out / "model.safetensors").keys() == load_file(aside / "model.safetensors").keys()
    assert not (out / rundir.LOCK_FILE).exists() and not (aside / rundir.LOCK_FILE).exists()
