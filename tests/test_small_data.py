"""A user's own messy folder, end to end with the commands and presets a new user runs: make_lists -> data.check ->
small-data pretraining -> fine-tuning -> predict -> extract. The folder (``make_messy_folder``): 3 motion classes of
a textured shape over natural-looking backgrounds, mixed containers, codecs, sizes, frame rates and lengths, names
with blanks and non-ASCII letters, a truncated, an empty and a text ``.mp4``, a 5-frame clip and a ``notes.txt``."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("av", reason="PyAV makes the videos")

from vmae2.data.synthetic import make_messy_folder  # noqa: E402

# 15 of 30 held-out clips: a classifier at chance (1/3) gets 15 or more with probability 0.04
HELD_OUT_TOP1 = 50.0


def _run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """``python -m ARGS``; its ``stdout`` holds stdout and stderr, as a terminal shows them."""
    result = subprocess.run([sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if ok:
        assert result.returncode == 0, result.stdout[-6000:]
    return result


def _quarantined(path: Path) -> list[str]:
    """The paths a ``quarantine.tsv`` / ``failed.tsv`` lists (its header skipped)."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.split("\t")[0] for line in lines if line.strip() and not line.startswith("path\t")]


@pytest.mark.slow
@pytest.mark.demo
def test_a_messy_folder_from_lists_to_features(tmp_path):
    folder = make_messy_folder(tmp_path / "my videos", per_class=10, seed=0)
    bad = {str(p.resolve()) for p in folder["bad"][:3]}  # cut off, empty, text; the 5-frame clip is usable here
    lists = tmp_path / "lists"
    _run("vmae2.data.make_lists", str(tmp_path / "my videos"), "--out", str(lists))

    check = _run("vmae2.data.check", str(lists / "pretrain.txt"), ok=False)
    assert check.returncode != 0
    assert "31 good, 3 bad" in check.stdout, check.stdout
    rows = [line for line in check.stdout.splitlines() if "BAD" in line]
    assert len(rows) == 3 and all(sum(line.startswith(path) for line in rows) == 1 for path in bad), rows

    # small_data is the default for a small folder on a CPU; the pretraining learns more than colours
    pre = tmp_path / "pretrain"
    out = _run("vmae2.train", "--data_path", str(lists / "pretrain.txt"), "--output_dir", str(pre)).stdout
    assert "--preset small_data" in out
    rel = float(re.search(r"reconstruction error ([\d.]+)x the flat-colour baseline", out).group(1))
    assert rel < 0.8, out[-2000:]
    assert "plateau" not in out
    assert sorted(_quarantined(pre / "quarantine.tsv")) == sorted(bad)

    # the fine-tune from it fits its own training videos and beats chance on clips of another folder
    names = (lists / "classes.txt").read_text().split()
    held_out = make_messy_folder(tmp_path / "held out", per_class=10, seed=1)["good"]
    (tmp_path / "held_out.csv").write_text("".join(f"{p},{names.index(p.parent.name)}\n" for p in held_out))
    ft = tmp_path / "finetune"
    out = _run("vmae2.finetune", "--init", str(pre / "model.safetensors"), "--data_path", str(lists / "train.csv"),
               "--val_data_path", str(lists / "val.csv"), "--test_data_path", str(tmp_path / "held_out.csv"),
               "--class_names", str(lists / "classes.txt"), "--output_dir", str(ft)).stdout
    fit = float(re.search(r"training-set top-1 ([\d.]+)", out).group(1))
    assert fit >= 90.0, out[-2000:]
    assert "did not fit" not in out
    held_out_top1 = float(re.search(r"test \(5x3 views\): top-1 ([\d.]+)", out).group(1))
    assert held_out_top1 >= HELD_OUT_TOP1, out[-2000:]  # chance: 33.3
    train_bad = {r[0] for r in csv.reader(open(lists / "train.csv")) if str(Path(r[0]).resolve()) in bad}
    assert sorted(_quarantined(ft / "quarantine.tsv")) == sorted(train_bad)

    videos = [str(p) for p in folder["good"][:3]]
    out = _run("vmae2.predict", "--run", str(ft), *videos).stdout
    rows = [line for line in out.splitlines() if line.startswith(tuple(videos))]
    assert len(rows) == 3 and all(sorted(re.findall(r"  (\w+) [\d.]+", row)) == sorted(names) for row in rows), out

    # extraction reads make_lists' list with the fine-tuned run's preprocessing
    feats = tmp_path / "features"
    _run("vmae2.extract", "--weights", str(ft / "model.safetensors"), "--data_path", str(lists / "pretrain.txt"),
         "--output_dir", str(feats), "--num_workers", "0")
    manifest = json.loads((feats / "manifest.json").read_text())
    assert manifest["options"]["frame_stride"] == 4 and manifest["options"]["normalize"] is True
    assert manifest["options"]["pool"] == "mean_motion"  # the fine-tuned run's pooling
    failed = _quarantined(feats / "failed.tsv")
    assert sorted(failed) == sorted(bad | {str(folder["bad"][3].resolve())})  # 5 frames < a 4 x 4-frame window
    written = {p.relative_to(feats).with_suffix("").as_posix() for p in feats.rglob("*.npy")}
    assert written == {p.relative_to(tmp_path / "my videos").with_suffix("").as_posix() for p in folder["good"]}
