"""The README's quick start, parsed out of README.md and run as written (fewer steps) in a fresh folder: generated
class folders -> lists -> pretraining -> fine-tuning -> predict -> evaluate from the run folder alone."""
import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("av", reason="PyAV makes the videos")

ROOT = Path(__file__).resolve().parents[1]
# the only additions to the README's commands: fewer steps, no worker processes (CI time)
FAST = {"vmae2.train": ["--max_steps", "3", "--log_every", "1", "--num_workers", "0"],
        "vmae2.finetune": ["--max_steps", "4", "--num_workers", "0"],
        "vmae2.evaluate": ["--num_workers", "0"]}


def quick_start_commands() -> list[list[str]]:
    section = (ROOT / "README.md").read_text().split("## Quick start", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _run(cwd, args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_quick_start_runs_as_written_and_evaluate_reproduces_the_fine_tune_test(tmp_path):
    from vmae2.config import gpu_visible

    commands = quick_start_commands()
    assert [c[:3] for c in commands] == [["python", "-m", m] for m in (
        "vmae2.data.make_videos", "vmae2.data.make_lists", "vmae2.train", "vmae2.finetune", "vmae2.predict",
        "vmae2.evaluate")]
    out = {}
    for command in commands:
        module = command[2]
        out[module] = _run(tmp_path, command[1:] + FAST.get(module, []))

    assert (tmp_path / "lists" / "classes.txt").read_text() == "right\nstill\n"
    train = out["vmae2.train"]
    if not gpu_visible():  # the small-data default, said on start-up
        assert "no --preset: 12 videos and no GPU, so --preset small_data" in train.stderr
    assert "clips of 4 frames x 128 px, every 4th frame" in train.stdout and "3 steps of batch 4" in train.stdout
    # the fine-tuning took the model and geometry of the pretraining run (its config.json)
    assert "vit_tiny_patch16_224" in out["vmae2.finetune"].stdout
    assert "clips of 4 frames x 128 px, every 4th frame" in out["vmae2.finetune"].stdout
    run = tmp_path / "runs" / "finetune"
    saved = json.loads((run / "config.json").read_text())
    assert (saved["num_frames"], saved["input_size"], saved["nb_classes"]) == (4, 128, 2)

    # predict: class names with probabilities (two classes: they sum to 1)
    line = out["vmae2.predict"].stdout.strip().splitlines()[-1].split()
    assert line[0] == "videos/right/right_000.mp4" and {line[1], line[3]} == {"right", "still"}
    assert abs(float(line[2]) + float(line[4]) - 1) < 2e-3 and float(line[2]) >= float(line[4])

    # evaluate --run DIR alone reproduces the fine-tune's own multi-view test, file for file
    test = json.loads((run / "test_metrics.json").read_text())
    assert json.loads((run / "evaluate" / "test_metrics.json").read_text()) == test
    assert (run / "evaluate" / "predictions.csv").read_text() == (run / "predictions.csv").read_text()
    # ... and so does --weights alone (the geometry comes from the config.json beside it, not the 16x224 defaults)
    _run(tmp_path, ["-m", "vmae2.evaluate", "--weights", str(run / "model.safetensors"), "--data_path",
                    "lists/val.csv", "--num_workers", "0", "--output_dir", "plain"])
    assert json.loads((tmp_path / "plain" / "test_metrics.json").read_text()) == test

    # predict gives the probabilities of the test protocol: those in predictions.csv
    with open(run / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["label_name"] for r in rows} == {"right", "still"}
    result = _run(tmp_path, ["-m", "vmae2.predict", "--run", str(run), "--format", "json",
                             *(r["path"] for r in rows)])
    predicted = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    for row, pred in zip(rows, predicted):
        assert pred["path"] == row["path"] and "|".join(pred["classes"]) == row["top5_names"]
        assert " ".join(f"{p:.4f}" for p in pred["probs"]) == row["top5_probs"]
