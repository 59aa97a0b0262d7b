"""``python -m vmae2.finetune`` and ``python -m vmae2.evaluate`` end to end on the tiny model (few steps)."""
import csv
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from entry_points import stop_with_sigterm

from oracle.tolerances import assert_close_fp

pytest.importorskip("av", reason="PyAV makes the labeled videos")

from vmae2.data.synthetic import make_labeled_videos  # noqa: E402
from vmae2.finetune import main  # noqa: E402
from vmae2.training.state import Checkpoints  # noqa: E402
from vmae2.weights import stored_pos_grid  # noqa: E402

SMALL = ["--preset", "demo", "--num_frames", "4", "--sampling_rate", "2", "--input_size", "32",
         "--short_side_size", "32", "--batch_size", "2", "--num_sample", "2", "--num_workers", "0", "--drop_path",
         "0.1", "--log_every", "1", "--warmup_steps", "1", "--test_num_segment", "2", "--test_num_crop", "2",
         "--flip", "false", "--aa", "rand-m7-n4-mstd0.5-inc1", "--reprob", "0.25", "--mixup", "0.8", "--cutmix", "1.0",
         "--model", "vit_tiny_patch16_224", "--nb_classes", "2", "--lr", "0.01"]
DETERMINISTIC = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    return make_labeled_videos(tmp_path_factory.mktemp("labeled"), {"train": 4, "test": 2}, size=(48, 40),
                               num_frames=16, motions=("still", "right"))


def _run(module, args, check=True):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **DETERMINISTIC}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          check=check, timeout=600)


@pytest.mark.parametrize("args,match", [
    (["--layer_decay", "0"], "--layer_decay 0.0"),
    (["--model", "pretrain_videomae_base_patch16_224"], "classification model"),
    (["--smoothing", "2"], "--smoothing 2.0"),
    (["--crop_scale", "0.5", "0.2"], "--crop_scale"),
    (["--label_maps", "a.txt"], "needs --data_path"),
    (["--data_path", "missing.csv"], "--data_path 'missing.csv'"),
    (["--batch_size", "3", "--num_sample", "1", "--mixup", "0.8"], "must be even"),
    (["--init_head_index", "x.json"], "--init_head_index"),
])
def test_bad_values_fail_before_any_work(args, match, capsys, tmp_path):
    assert main(args + ["--output_dir", str(tmp_path / "never")]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_finetune_evaluate_and_step_exact_resume(lists, tmp_path):
    args = SMALL + ["--data_path", str(lists["train"]), "--val_data_path", str(lists["test"]),
                    "--test_data_path", str(lists["test"]), "--max_steps", "6", "--save_every_steps", "2",
                    "--keep_last", "5", "--class_names", str(lists["train"].parent / "classes.txt")]
    a = tmp_path / "a"
    out = _run("vmae2.finetune", args + ["--output_dir", str(a)]).stdout
    # the final fit check on the training videos, and its warning exactly when a small set was not fitted
    fit = float(re.search(r"training-set top-1 ([\d.]+) \(8 training videos, one centred view\)", out).group(1))
    assert ("WARNING: the fine-tune did not fit its own training videos" in out) == (fit < 90), out
    assert {p.name for p in a.iterdir()} >= {"checkpoints", "metrics.jsonl", "model.safetensors",
                                            "model_best.safetensors", "test_metrics.json", "per_class.csv",
                                            "predictions.csv", "confusion.png"}
    records = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert any("val_top1" in r for r in records)
    test = json.loads((a / "test_metrics.json").read_text())
    assert test["videos_scored"] == test["videos_listed"] == 4
    # The accuracies recomputed from the saved per-video predictions and the labels in the test list.
    listed = dict(line.rsplit(" ", 1) for line in lists["test"].read_text().splitlines())
    with open(a / "predictions.csv", newline="") as fh:
        rows = [(r["path"], r["label"], r["top5"]) for r in csv.DictReader(fh)]
    assert sorted(path for path, _, _ in rows) == sorted(listed)
    assert all(label == listed[path] for path, label, _ in rows)
    hits = {path: top5.split()[0] == listed[path] for path, _, top5 in rows}
    assert all(sorted(top5.split()) == ["0", "1"] for _, _, top5 in rows)  # 2 classes: both in every top 5
    # counts out of 4 videos (2 per class): multiples of 25 (50 per class), exact in binary floating point
    assert test["top1"] == 100 * sum(hits.values()) / 4 and test["top5"] == 100.0
    per_class = [100 * sum(h for path, h in hits.items() if listed[path] == c) / 2 for c in ("0", "1")]
    assert test["mean_class_acc"] == sum(per_class) / 2, per_class

    # The standalone evaluation of the saved weights reproduces the fine-tuning run's test report.
    ev = tmp_path / "eval"
    _run("vmae2.evaluate", ["--model", "vit_tiny_patch16_224", "--weights", str(a / "model.safetensors"),
                            "--data_path", str(lists["test"]), "--nb_classes", "2", "--num_frames", "4",
                            "--sampling_rate", "2", "--input_size", "32", "--short_side_size", "32",
                            "--test_num_segment", "2", "--test_num_crop", "2", "--num_workers", "0",
                            "--output_dir", str(ev)])
    # accuracies from counts and top-5 class ids: discrete results of the same weights on the same clips
    assert json.loads((ev / "test_metrics.json").read_text()) == test
    assert (ev / "predictions.csv").read_text() == (a / "predictions.csv").read_text()

    # Resuming from the step-2 checkpoint gives the same weights, bit for bit, as the uninterrupted run.
    b = tmp_path / "b"
    _run("vmae2.finetune", args + ["--output_dir", str(b), "--resume",
                                   str(a / "checkpoints" / "checkpoint-00000002.pt")])
    final_a = Checkpoints.load(a / "checkpoints" / "checkpoint-00000006.pt")["model"]
    final_b = Checkpoints.load(b / "checkpoints" / "checkpoint-00000006.pt")["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_init_from_a_pretraining_checkpoint_on_another_grid(lists, tmp_path):
    from vmae2.models import create_model
    from vmae2.weights import save_safetensors

    pre = create_model("pretrain_videomae_tiny_patch16_224", num_frames=8, img_size=64)  # grid (4, 4, 4)
    save_safetensors(pre, tmp_path / "pre.safetensors")
    out = tmp_path / "ft"
    result = _run("vmae2.finetune", SMALL + ["--data_path", str(lists["train"]), "--max_steps", "1",
                                             "--init", str(tmp_path / "pre.safetensors"), "--init_num_frames", "8",
                                             "--init_input_size", "64", "--output_dir", str(out)])
    assert "initialised from" in result.stdout and "fc_norm.weight" in result.stdout
    # the grid the table came from travels with the weights, so evaluation rebuilds the same table
    assert stored_pos_grid(out / "model.safetensors") == (4, 4, 4)


def test_demo_preset_only_without_data_and_small_data_gets_small_data(tmp_path, monkeypatch, capsys):
    import vmae2.cli
    from vmae2.cli import parse_config
    from vmae2.finetune import FINETUNE

    assert parse_config([], FINETUNE).model == "vit_tiny_patch16_224"
    listing = tmp_path / "l.csv"
    listing.write_text("a.mp4 0\n")
    monkeypatch.setattr(vmae2.cli, "gpu_visible", lambda: False)
    cfg = parse_config(["--data_path", str(listing)], FINETUNE)
    assert cfg.model == "vit_tiny_patch16_224" and cfg.output_dir == "output/finetune"
    assert "no --preset: 1 videos and no GPU, so --preset small_data" in capsys.readouterr().err
    monkeypatch.setattr(vmae2.cli, "gpu_visible", lambda: True)  # the official recipe where it can run
    cfg = parse_config(["--data_path", str(listing)], FINETUNE)
    assert cfg.model == "vit_base_patch16_224" and cfg.aa == "rand-m7-n4-mstd0.5-inc1" and cfg.test_num_segment == 10
    assert "so --preset official_defaults (the official recipe)" in capsys.readouterr().err


def test_evaluation_scores_the_readable_videos(lists, tmp_path):
    from vmae2.models import create_model
    from vmae2.weights import save_safetensors

    save_safetensors(create_model("vit_tiny_patch16_224", num_classes=2, num_frames=4, img_size=32),
                     tmp_path / "w.safetensors")
    (tmp_path / "empty.mp4").write_bytes(b"")
    listing = tmp_path / "with_bad.csv"
    listing.write_text(lists["test"].read_text() + f"{tmp_path / 'empty.mp4'} 1\n")
    _run("vmae2.evaluate", EVAL + ["--weights", str(tmp_path / "w.safetensors"), "--data_path", str(listing),
                                   "--output_dir", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "test_metrics.json").read_text())
    assert summary["videos_listed"] == 5 and summary["videos_scored"] == 4 and summary["videos_unreadable"] == 1
    assert "empty.mp4" in (tmp_path / "out" / "quarantine.tsv").read_text()


@pytest.mark.slow
@pytest.mark.demo
def test_progressive_demo_beats_chance_on_held_out_clips(tmp_path):
    """The embedded default: MAE-pretrain the tiny model on the (unlabeled) training clips, fine-tune it on
    still vs. moving textures, test 2x2 views on 24 held-out clips. Chance is 50%; 75% or more has a p-value
    below 0.02 under chance."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **DETERMINISTIC, "VMAE2_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "demo"
    subprocess.run([sys.executable, "-m", "vmae2.finetune", "--output_dir", str(out)], env=env, check=True,
                   capture_output=True, text=True)
    assert (out / "pretrain" / "model.safetensors").exists()
    test = json.loads((out / "test_metrics.json").read_text())
    assert test["videos_scored"] == 24
    assert test["top1"] >= 75.0, test


EVAL = ["--model", "vit_tiny_patch16_224", "--nb_classes", "2", "--num_frames", "4", "--sampling_rate", "2",
        "--input_size", "32", "--short_side_size", "32", "--test_num_segment", "2", "--test_num_crop", "3",
        "--num_workers", "0", "--batch_size", "1"]


def test_two_process_evaluation_equals_one_process(lists, tmp_path):
    """3 test videos on 2 ranks: the sampler pads rank 1 with a repeat, which the merge counts once."""
    from vmae2.models import create_model
    from vmae2.weights import save_safetensors

    torch.manual_seed(3)
    save_safetensors(create_model("vit_tiny_patch16_224", num_classes=2, num_frames=4, img_size=32),
                     tmp_path / "w.safetensors")
    listing = tmp_path / "three.csv"
    listing.write_text("".join(lists["test"].read_text().splitlines(keepends=True)[:3]))
    args = EVAL + ["--weights", str(tmp_path / "w.safetensors"), "--data_path", str(listing)]
    _run("vmae2.evaluate", args + ["--output_dir", str(tmp_path / "one")])
    env = {**os.environ, **DETERMINISTIC}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    str(29500 + os.getpid() % 1000), "-m", "vmae2.evaluate", *args, "--output_dir",
                    str(tmp_path / "two")], env=env, check=True, capture_output=True, text=True, timeout=300)
    one = json.loads((tmp_path / "one" / "test_metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "test_metrics.json").read_text())
    assert one == two and one["videos_scored"] == 3
    assert (tmp_path / "one" / "predictions.csv").read_text() == (tmp_path / "two" / "predictions.csv").read_text()


def test_lists_with_their_own_label_maps_are_merged(lists, tmp_path):
    """K710-style: list A labels (still, right), list B labels (right, up) -> 3 classes; B repeats one video of A
    (same file name stem = same video id), which is dropped."""
    lines = lists["train"].read_text().splitlines()
    a_lines = [ln for ln in lines if ln.endswith(" 0")][:2] + [ln for ln in lines if ln.endswith(" 1")][:2]
    (tmp_path / "a.txt").write_text("still\nright\n")
    (tmp_path / "b.txt").write_text("Right\nup\n")
    (tmp_path / "a.csv").write_text("\n".join(a_lines) + "\n")
    right = [ln for ln in a_lines if ln.rsplit(" ", 1)[1] == "1"]
    (tmp_path / "b.csv").write_text(f"{right[0].rsplit(' ', 1)[0]} 0\n{a_lines[0].rsplit(' ', 1)[0]} 1\n")
    result = _run("vmae2.finetune", SMALL[:-4] + ["--nb_classes", "3", "--lr", "0.01", "--max_steps", "1",
                                                  "--data_path", f"{tmp_path / 'a.csv'},{tmp_path / 'b.csv'}",
                                                  "--label_maps", f"{tmp_path / 'a.txt'},{tmp_path / 'b.txt'}",
                                                  "--output_dir", str(tmp_path / "out")])
    assert "4 videos, 3 classes" in result.stdout and "duplicates 2" in result.stdout
    both = ["--data_path", f"{tmp_path / 'a.csv'},{tmp_path / 'b.csv'}",
            "--label_maps", f"{tmp_path / 'a.txt'},{tmp_path / 'b.txt'}"]
    bad = _run("vmae2.finetune", SMALL + ["--max_steps", "1", *both, "--output_dir", str(tmp_path / "bad")],
               check=False)
    assert bad.returncode == 2 and "--nb_classes 3" in bad.stderr


def test_divergence_stops_with_exit_3_and_keeps_the_good_checkpoint(lists, tmp_path):
    out = tmp_path / "nan"
    result = _run("vmae2.finetune", SMALL[:-2] + ["--lr", "1e36", "--data_path", str(lists["train"]), "--max_steps",
                                                  "6", "--save_every_steps", "1", "--output_dir", str(out)],
                  check=False)
    assert result.returncode == 3 and "non-finite" in result.stderr, result.stderr
    kept = [p.name for p in Checkpoints(out, 5).paths()]
    bad_step = int(result.stderr.split("non-finite at step ")[1].split(";")[0])
    assert kept and all(int(name[11:19]) <= bad_step for name in kept)  # nothing saved after the bad step


def test_two_processes_train_like_one_with_the_global_batch(lists, tmp_path):
    """Without mixup and drop path (whose draws are per process), DDP on 2 gloo processes with batch 2 each
    sees the clips (and augmentations, drawn per global position) of 1 process with batch 4, and ends with the
    same weights up to float summation order."""
    common = SMALL[:-2] + ["--lr", "0.05", "--mixup", "0", "--cutmix", "0", "--drop_path", "0", "--max_steps", "2",
                           "--data_path", str(lists["train"])]
    one = tmp_path / "one"
    _run("vmae2.finetune", [*common, "--batch_size", "4", "--output_dir", str(one)])
    two = tmp_path / "two"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    str(30500 + os.getpid() % 1000), "-m", "vmae2.finetune", *common, "--batch_size", "2",
                    "--output_dir", str(two)], env={**os.environ, **DETERMINISTIC}, check=True, capture_output=True,
                   text=True, timeout=300)
    a = Checkpoints.load(Checkpoints(one, 2).latest())["model"]
    b = Checkpoints.load(Checkpoints(two, 2).latest())["model"]
    # AdamW moves a weight by up to lr a step whatever its gradient's size, so a gradient's relative rounding error
    # (times up to 2^6 where its sum cancels) moves it by that fraction of lr: scale = 2^6 * sum(lr).
    records = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    lr_sum = sum(r["lr"] for r in records if "lr" in r)
    for k in a:
        assert_close_fp(b[k], a[k], scale=2 ** 6 * lr_sum, msg=k)
    assert not torch.equal(a["head.weight"], create_head_at_init())


def create_head_at_init():
    from vmae2.models import create_model

    torch.manual_seed(0)
    return create_model("vit_tiny_patch16_224", num_classes=2, num_frames=4, img_size=32).head.weight.detach()


@pytest.mark.parametrize("precision", ["bf16"])
def test_low_precision_fine_tuning_runs(lists, tmp_path, precision):
    """--warmup_steps 1 makes step 1's learning rate 0, so both logged losses come from the initial weights; the
    clips, augmentations, mixup and drop-path draws do not depend on the precision: each loss is the fp32 run's
    within two bf16 ulps."""
    losses = {}
    for name in ("fp32", precision):
        out = tmp_path / name
        _run("vmae2.finetune", SMALL + ["--data_path", str(lists["train"]), "--max_steps", "2", "--precision", name,
                                        "--accum_steps", "2", "--output_dir", str(out)])
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2]
        losses[name] = [r["loss"] for r in records]
    for step, (low, ref) in enumerate(zip(losses[precision], losses["fp32"]), 1):
        assert_close_fp(low, ref, torch.bfloat16, msg=f"{precision} step {step}")


def test_sigterm_saves_and_exits_cleanly(lists, tmp_path):
    args = SMALL + ["--data_path", str(lists["train"]), "--max_steps", "400", "--save_every_steps", "1000",
                    "--output_dir", str(tmp_path)]
    stop_with_sigterm("vmae2.finetune", args)
    saved = Checkpoints(tmp_path, 2).latest()
    assert saved is not None and 2 <= Checkpoints.load(saved)["step"] < 400
