"""The small-data recipe end to end, as a new user runs it, with its accuracy on clips it never saw:
``python -m benchmarks.small_data [--work DIR] [--out FILE]``.

A generated messy folder (``make_messy_folder(seed=0)``: 3 motion classes, mixed containers, 4 bad files) goes
through ``make_lists`` -> ``vmae2.train`` -> ``vmae2.finetune`` with the presets picked for it (``small_data``); the
fine-tuned run is then tested (``vmae2.evaluate --run``, the run's 5x3 views) on two other generated folders
(seeds 1 and 2, their readable clips). Each command's wall time, the pretraining's reconstruction error against the
flat-colour baseline, the training-set fit and the held-out top-1 go to ``--out`` as JSON with the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.profile_step import machine
from vmae2.data.synthetic import make_messy_folder

HELD_OUT_SEEDS = (1, 2)


def _run(command: list[str]) -> tuple[str, float]:
    """``python -m COMMAND``: (its output, wall seconds); a failure raises with the output's tail."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode:
        raise RuntimeError(f"python -m {' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}")
    return done.stdout, round(time.perf_counter() - start, 1)


def _number(pattern: str, text: str) -> float:
    return float(re.search(pattern, text).group(1))


def _held_out_list(work: Path, seed: int, names: list[str]) -> Path:
    """A fine-tune list of the readable clips of a generated folder of ``seed``, labelled by class name."""
    good = make_messy_folder(work / f"held out {seed}", seed=seed)["good"]
    path = work / f"held_out_{seed}.csv"
    path.write_text("".join(f"{p},{names.index(p.parent.name)}\n" for p in good))
    return path


def run(work: Path) -> dict:
    make_messy_folder(work / "my videos", seed=0)
    lists, pre, ft = work / "lists", work / "pretrain", work / "finetune"
    _run(["vmae2.data.make_lists", str(work / "my videos"), "--out", str(lists)])
    names = (lists / "classes.txt").read_text().split()
    out, pre_s = _run(["vmae2.train", "--data_path", str(lists / "pretrain.txt"), "--output_dir", str(pre)])
    runs = [{"command": "python -m vmae2.train --data_path lists/pretrain.txt --output_dir pretrain", "wall_s": pre_s,
             "preset": re.search(r"--preset (\w+)", out).group(1),
             "reconstruction_vs_flat": _number(r"reconstruction error ([\d.]+)x the flat-colour baseline", out)}]
    out, ft_s = _run(["vmae2.finetune", "--init", str(pre / "model.safetensors"), "--data_path",
                      str(lists / "train.csv"), "--val_data_path", str(lists / "val.csv"), "--class_names",
                      str(lists / "classes.txt"), "--output_dir", str(ft)])
    runs.append({"command": "python -m vmae2.finetune --init pretrain/model.safetensors --data_path lists/train.csv "
                            "--val_data_path lists/val.csv --class_names lists/classes.txt --output_dir finetune",
                 "wall_s": ft_s, "steps": int(_number(r"done: (\d+) steps", out)),
                 "training_set_top1": _number(r"training-set top-1 ([\d.]+)", out)})
    for seed in HELD_OUT_SEEDS:
        held_out = _held_out_list(work, seed, names)
        out, ev_s = _run(["vmae2.evaluate", "--run", str(ft), "--data_path", str(held_out), "--output_dir",
                          str(work / f"evaluate_{seed}")])
        runs.append({"command": f"python -m vmae2.evaluate --run finetune --data_path held_out_{seed}.csv",
                     "wall_s": ev_s, "held_out_folder_seed": seed, "videos": len(held_out.read_text().splitlines()),
                     "views": re.search(r"(\d+x\d+) views", out).group(1),
                     "held_out_top1": _number(r"views: top-1 ([\d.]+)", out), "chance": round(100 / len(names), 1)})
    return {"what": __doc__.split("\n\n")[0], "machine": machine(), "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.small_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", help="where the folders and runs go (default: a temporary folder)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(args.work or tmp))
    text = json.dumps(result, indent=1) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
