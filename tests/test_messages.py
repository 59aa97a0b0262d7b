"""Messages that point the right way: an unfinished run, a run without a test list, the largest batch that fits,
data.check on the shared CLI, warnings during the progress line."""
import io
import logging
import re
import sys

import pytest
from run_folders import finetune_run_folder

import vmae2.cli
from vmae2.cli import parse_config
from vmae2.data import check as check_cli
from vmae2.evaluate import EVALUATE
from vmae2.predict import PREDICT

# -- a. an unfinished run ---------------------------------------------------------------------------------------

def test_an_unfinished_run_says_resume_or_pass_its_last_checkpoint(tmp_path, capsys):
    from vmae2.evaluate import main as evaluate
    from vmae2.predict import main as predict

    run = finetune_run_folder(tmp_path / "ft")
    (run / "model.safetensors").unlink()
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    assert evaluate(["--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"--run {str(run)!r} has no model.safetensors: its fine-tuning did not finish" in err
    assert "It saved no checkpoint yet" in err and f"--output_dir {run}" in err and "is invalid" not in err
    (run / "checkpoints").mkdir()
    for step in (100, 200):
        (run / "checkpoints" / f"checkpoint-{step:08d}.pt").write_bytes(b"")
    last = run / "checkpoints" / "checkpoint-00000200.pt"
    for main, extra in ((evaluate, []), (predict, [str(video)])):
        assert main(["--run", str(run), *extra]) == 2
        err = capsys.readouterr().err
        assert "has no model.safetensors" in err and "continues from checkpoint-00000200.pt" in err
        assert f"pass its last checkpoint with --weights {last}" in err
    cfg = parse_config(["--run", str(run), "--weights", str(last)], EVALUATE)  # the fix the message names
    assert cfg.weights == str(last) and cfg.num_frames == 8


# -- b. a run without a test list -------------------------------------------------------------------------------

def test_evaluating_a_run_without_a_test_list_asks_for_one(tmp_path, capsys):
    from vmae2.evaluate import main as evaluate

    run = finetune_run_folder(tmp_path / "ft", test_data_path=None)
    assert evaluate(["--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"--run {str(run)!r} has no test or validation list" in err and "pass the list to test on: --data_path " \
        "LIST" in err and "is required" not in err
    assert parse_config(["--run", str(run), "--data_path", str(run / "test.csv")], EVALUATE).data_path == str(
        run / "test.csv")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    assert parse_config(["--run", str(run), str(video)], PREDICT).videos == [str(video)]  # predict needs no list
    val = finetune_run_folder(tmp_path / "ft_val", test_data_path=None, val_data_path=str(tmp_path / "ft" / "test.csv"))
    assert parse_config(["--run", str(val)], EVALUATE).data_path == str(tmp_path / "ft" / "test.csv")


# -- c. the largest batch that fits ------------------------------------------------------------------------------

def _loaders(videos: int):
    from vmae2.data.classification.augment import FinetuneAugment
    from vmae2.data.classification.loader import ClassifyConfig, ClassifyLoader
    from vmae2.data.lists import VideoRecord
    from vmae2.data.pretraining.loader import PretrainLoader

    records = [VideoRecord(f"v{i}.mp4", 0, -1, 0, True, "", 4, "test") for i in range(videos)]
    yield lambda b: PretrainLoader(records, batch_size=b, backend="torch")
    yield lambda b: ClassifyLoader(records, mode="train", batch_size=b, config=ClassifyConfig(),
                                   transform=FinetuneAugment(64))


@pytest.mark.parametrize("videos, accum_steps", [(2, 1), (5, 2), (7, 3), (9, 3)])
def test_the_batch_size_hint_is_the_largest_batch_that_fits(videos, accum_steps):
    from vmae2.training.loop import too_few_batches

    for loader in _loaders(videos):
        text = too_few_batches(loader(videos + 1), videos + 1, accum_steps)
        fits = int(re.search(r"--batch_size \(at most (\d+)\)", text).group(1))
        assert len(loader(fits)) >= accum_steps > len(loader(fits + 1)), text


def test_too_many_accumulation_steps_for_the_data_name_accum_steps():
    from vmae2.training.loop import too_few_batches

    for loader in _loaders(3):
        text = too_few_batches(loader(1), 1, 4)
        assert text.startswith("--accum_steps 4 is too large") and "lower --accum_steps (at most 3)" in text
        assert len(loader(1)) >= 3


def test_a_batch_too_large_for_two_videos_suggests_two(tmp_path, monkeypatch, capsys):
    pytest.importorskip("av")
    from vmae2.data.synthetic import make_videos
    from vmae2.train import main

    make_videos(tmp_path / "v", 2, seed=0, sizes=((64, 64),), num_frames=(16,))
    monkeypatch.chdir(tmp_path)
    assert main(["--preset", "small_data", "--data_path", "v/train.csv", "--num_workers", "0", "--output_dir", "out",
                 "--batch_size", "64"]) == 2
    assert "pass a smaller --batch_size (at most 2)" in capsys.readouterr().err


# -- d. data.check on the shared CLI -----------------------------------------------------------------------------

def test_check_takes_class_names_and_suggests_mistyped_options(tmp_path, capsys):
    pytest.importorskip("av")
    from vmae2.data.synthetic import encode_clip, render_clip

    video = encode_clip(render_clip(0, 0, 64, 48, 8), tmp_path / "red.mp4")
    listing = tmp_path / "train.csv"
    listing.write_text(f"{video} red\n")
    (tmp_path / "classes.txt").write_text("blue\nred\n")
    bad_out = str(tmp_path / "bad.txt")
    assert check_cli.main([str(listing), "--preset", "small_data", "--bad_out", bad_out]) == 2
    assert "--class_names FILE" in capsys.readouterr().err  # what the message asks for is an option
    assert check_cli.main([str(listing), "--preset", "small_data", "--class_names", str(tmp_path / "classes.txt"),
                           "--bad_out", bad_out]) == 0
    assert "1 good, 0 bad" in capsys.readouterr().out
    for typo, meant in (("--clas_names", "--class_names"), ("--num_frams", "--num_frames"), ("--bad-out", "--bad_out")):
        with pytest.raises(SystemExit) as exc:
            check_cli.main([str(listing), typo, "x"])
        assert exc.value.code == 2 and f"unknown option {typo}: did you mean {meant}?" in capsys.readouterr().err


def test_check_frames_follow_the_training_preset(tmp_path, monkeypatch, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text("a.mp4 0 -1\n" * 12)

    def clip(*args):
        cfg = parse_config([str(listing), *args], check_cli.CHECK)
        return cfg.num_frames, cfg.sampling_rate

    assert clip("--preset", "small_data") == (4, 4)  # the pretraining small_data preset's clip
    assert clip("--preset", "official_defaults") == (16, 4) and clip("--preset", "vit_g_k710_it_hmdb51") == (16, 2)
    assert clip("--preset", "small_data", "--num_frames", "8") == (8, 4)  # a flag still wins
    # without --preset: the preset python -m vmae2.train --data_path LIST picks, said on stderr
    monkeypatch.setattr(vmae2.cli, "gpu_visible", lambda: False)
    assert clip() == (4, 4)
    assert "12 videos and no GPU, so --preset small_data" in capsys.readouterr().err
    monkeypatch.setattr(vmae2.cli, "gpu_visible", lambda: True)
    assert clip() == (16, 4)


def test_check_refuses_bad_values_and_a_missing_list(capsys):
    assert check_cli.main([__file__, "--num_frames", "0"]) == 2
    assert "--num_frames 0 is invalid: must be >= 1" in capsys.readouterr().err
    assert check_cli.main([]) == 2
    assert "LIST is required" in capsys.readouterr().err


# -- e. output during the progress line --------------------------------------------------------------------------

def test_output_during_the_progress_line_starts_on_a_fresh_line(tmp_path, monkeypatch):
    from vmae2.training.log import MetricsLog

    terminal = io.StringIO()  # stdout and stderr on one terminal
    terminal.isatty = lambda: True
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    handler = logging.StreamHandler(terminal)
    logging.getLogger().addHandler(handler)
    try:
        metrics = MetricsLog(tmp_path, total_steps=4)
        record = {"loss": 1.0, "lr": 1e-3, "clips_per_s": 2.0}
        metrics.write({**record, "step": 1})
        metrics.write({**record, "step": 2})
        print("warning: printed")
        metrics.write({**record, "step": 3})
        logging.getLogger("vmae2.test").warning("logged")
        metrics.write({**record, "step": 4})
        print("error: on stderr", file=sys.stderr)
        metrics.close()
        print("done")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = terminal.getvalue().split("\n")
    assert [line.split("\r")[-1].split("  ")[0] for line in lines] == [
        "step 2/4", "warning: printed", "step 3/4", "logged", "step 4/4", "error: on stderr", "done", ""]
    assert sys.stdout is terminal and sys.stderr is terminal and not handler.filters
