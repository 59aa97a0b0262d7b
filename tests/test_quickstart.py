"""The README's quick start, parsed out of README.md and run as written (fewer steps) in a fresh folder: generated
class folders -> lists -> pretraining -> fine-tuning -> predict -> evaluate from the run folder alone."""
import csv
import importlib
import json
import shlex
from pathlib import Path

import pytest
import torch

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


def _run(capsys, args):
    """``python -m MODULE ARGS`` in this process (no interpreter start per command: CI time); its output."""
    module = importlib.import_module(args[1])
    assert module.main(args[2:]) == 0, capsys.readouterr()
    return capsys.readouterr()


@pytest.fixture
def one_thread():
    """One intra-op thread (as a CI run: every reduction in one order), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_quick_start_runs_as_written_and_evaluate_reproduces_the_fine_tune_test(tmp_path, monkeypatch, capsys,
                                                                               one_thread):
    from vmae2.cli import gpu_visible

    commands = quick_start_commands()
    assert [c[:3] for c in commands] == [["python", "-m", m] for m in (
        "vmae2.data.make_videos", "vmae2.data.make_lists", "vmae2.train", "vmae2.finetune", "vmae2.predict",
        "vmae2.evaluate", "vmae2.export")]
    monkeypatch.chdir(tmp_path)
    out = {c[2]: _run(capsys, c[1:] + FAST.get(c[2], [])) for c in commands}
    assert (tmp_path / "lists" / "classes.txt").read_text() == "right\nstill\n"
    train = out["vmae2.train"]
    if not gpu_visible():  # the small-data default, said on start-up
        assert "no --preset: 12 videos and no GPU, so --preset small_data" in train.err
    assert "clips of 4 frames x 128 px, sampling rate 4" in train.out and "3 steps of batch 4" in train.out
    # the fine-tuning took the model and geometry of the pretraining run (its config.json)
    assert "vit_tiny_patch16_224" in out["vmae2.finetune"].out
    assert "clips of 4 frames x 128 px, sampling rate 4" in out["vmae2.finetune"].out
    run = tmp_path / "runs" / "finetune"
    saved = json.loads((run / "config.json").read_text())
    assert (saved["num_frames"], saved["input_size"], saved["nb_classes"]) == (4, 128, 2)

    # predict: class names with probabilities (two classes: they sum to 1)
    line = out["vmae2.predict"].out.strip().splitlines()[-1].split()
    assert line[0] == "videos/right/right_000.mp4" and {line[1], line[3]} == {"right", "still"}
    assert abs(float(line[2]) + float(line[4]) - 1) < 2e-3 and float(line[2]) >= float(line[4])

    # evaluate --run DIR alone reproduces the fine-tune's own multi-view test, file for file
    test = json.loads((run / "test_metrics.json").read_text())
    assert json.loads((run / "evaluate" / "test_metrics.json").read_text()) == test
    assert (run / "evaluate" / "predictions.csv").read_text() == (run / "predictions.csv").read_text()
    # ... and so does --weights alone (the geometry comes from the config.json beside it, not the 16x224 defaults)
    _run(capsys, ["-m", "vmae2.evaluate", "--weights", str(run / "model.safetensors"), "--data_path",
                  "lists/val.csv", "--num_workers", "0", "--output_dir", "plain"])
    assert json.loads((tmp_path / "plain" / "test_metrics.json").read_text()) == test

    # predict gives the probabilities of the test protocol: those in predictions.csv
    with open(run / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["label_name"] for r in rows} == {"right", "still"}
    result = _run(capsys, ["-m", "vmae2.predict", "--run", str(run), "--format", "json", *(r["path"] for r in rows)])
    predicted = [json.loads(line) for line in result.out.splitlines() if line.startswith("{")]
    for row, pred in zip(rows, predicted):
        assert pred["path"] == row["path"] and "|".join(pred["classes"]) == row["top5_names"]
        assert " ".join(f"{p:.4f}" for p in pred["probs"]) == row["top5_probs"]

    # the export wrote a Hub folder of the fine-tuned classifier that loads with equal outputs
    from vmae2 import hub
    from vmae2.weights import load_weights

    exported = json.loads((run / "hub" / "config.json").read_text())
    assert exported["pool"] == "mean_motion" and exported["class_names"] == ["right", "still"]
    again = hub.from_pretrained(run / "hub")
    model = hub.build(exported)
    load_weights(model, run / "model.safetensors", strict=True)
    clip = torch.randn(1, 3, 4, 128, 128)
    with torch.no_grad():
        assert torch.equal(again.eval()(clip), model.eval()(clip))
