"""Smoke set for a minimal install: torch (CPU) + ``pip install -e .[test]``, no Triton, DALI, flash-attn,
xformers, matplotlib, tensorboard, transformers or native build. ``make test`` runs it in ``.venv-minimal``
(``make smoke-minimal``).

Every entry point runs for a couple of steps on generated data and must exit 0 without a traceback; each missing
extra must show up as a reason; an extra requested explicitly must fail before any work, naming the reason.
Prints ``N passed, N failed`` and exits non-zero when any check fails.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("triton", "nvidia.dali", "flash_attn", "xformers", "matplotlib", "tensorboard", "transformers")
NO_PLOT = "matplotlib is not importable"  # the pictures are skipped with this reason; the runs carry on


def run(name: str, args: list[str], env: dict, expect_rc: int = 0, expect: tuple[str, ...] = ()) -> str | None:
    """Run ``python args`` in the repository; ``None`` when it behaved, else what went wrong."""
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    out = result.stdout + result.stderr
    problems = []
    if result.returncode != expect_rc:
        problems.append(f"exit {result.returncode}, expected {expect_rc}")
    if "Traceback" in out:
        problems.append("printed a traceback")
    problems += [f"did not print {text!r}" for text in expect if text not in out]
    status = "ok  " if not problems else "FAIL"
    print(f"{status} {name}: python {' '.join(args)}" + ("" if not problems else f"\n     {'; '.join(problems)}"
                                                          f"\n     output tail:\n{out[-2000:]}"), flush=True)
    return "; ".join(problems) or None


def main() -> int:
    import importlib.util

    present = [m for m in EXTRAS if _importable(importlib.util, m)]
    if present:
        print(f"not a minimal install: {present} importable; run in `make smoke-minimal`'s environment")
        return 2
    work = Path(tempfile.mkdtemp(prefix="vmae2-minimal-"))
    # no native build either: point the extension lookup at an empty folder (the checkout may hold a JIT build)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "VMAE2_EXT_DIR": str(work / "no_native_build"),
           "VMAE2_CACHE": str(work / "cache")}
    env.pop("TRITON_INTERPRET", None)
    py = ["-c"]
    setup = ("from vmae2.data.synthetic import make_videos, make_labeled_videos; import sys; "
             "make_videos(sys.argv[1] + '/pre', 4, seed=0, sizes=((64, 48),), num_frames=(24,)); "
             "make_labeled_videos(sys.argv[1] + '/lab', {'train': 2, 'test': 1}, size=(48, 40), num_frames=16, "
             "motions=('still', 'right'))")
    folders = ["-m", "vmae2.data.make_videos", "--out", str(work / "classes"), "--classes", "still", "right",
               "--count", "2", "--sizes", "48x40", "--frames", "16"]
    pre, lab = work / "pre" / "train.csv", work / "lab"
    bench = work / "bench.json"  # a one-benchmark pytest-benchmark file for the report
    bench.write_text(json.dumps({"benchmarks": [{"group": "g", "name": "test_a", "stats": {"median": 0.001}}]}))
    small_ft = ["--preset", "demo", "--num_frames", "4", "--sampling_rate", "2", "--input_size", "32",
                "--short_side_size", "32", "--test_num_segment", "1", "--test_num_crop", "1", "--num_workers", "1"]
    checks = [
        ("imports", [*py, "import vmae2, vmae2_kernels, vmae2.data, vmae2.train, vmae2.finetune, vmae2.evaluate"], {}),
        ("generated data", [*py, setup, str(work)], {}),
        ("kernel info", ["-m", "vmae2_kernels.info"],
         {"expect": ("triton is not importable", "the native extension (csrc/) is unavailable")}),
        ("pretraining", ["-m", "vmae2.train", "--preset", "demo", "--data_path", str(pre), "--num_frames", "4",
                         "--input_size", "64", "--batch_size", "2", "--max_steps", "2", "--log_every", "1",
                         "--output_dir", str(work / "train")],
         {"expect": ("done: 2 steps", f"reconstruction.png skipped: {NO_PLOT}")}),
        ("dali requested without DALI", ["-m", "vmae2.train", "--data_backend", "dali", "--data_path", str(pre),
                                         "--output_dir", str(work / "never")],
         {"expect_rc": 2, "expect": ("--data_backend 'dali' is invalid: nvidia-dali is not installed",)}),
        ("fine-tuning", ["-m", "vmae2.finetune", *small_ft, "--data_path", str(lab / "train.csv"),
                         "--test_data_path", str(lab / "test.csv"), "--batch_size", "2", "--max_steps", "2",
                         "--output_dir", str(work / "ft")], {"expect": (f"confusion.png skipped: {NO_PLOT}",)}),
        ("evaluation", ["-m", "vmae2.evaluate", "--model", "vit_tiny_patch16_224", "--nb_classes", "2",
                        "--weights", str(work / "ft" / "model.safetensors"), "--data_path", str(lab / "test.csv"),
                        *small_ft[2:], "--output_dir", str(work / "eval")],
         {"expect": (f"confusion.png skipped: {NO_PLOT}", "top-1")}),
        ("class folders", folders, {"expect": ("2 class folders",)}),
        ("lists", ["-m", "vmae2.data.make_lists", str(work / "classes"), "--out", str(work / "lists")],
         {"expect": ("classes.txt  2 lines",)}),
        ("prediction", ["-m", "vmae2.predict", "--run", str(work / "ft"), str(lab / "test" / "still_000.mp4")],
         {"expect": ("still_000.mp4  ",)}),
        ("feature extraction", ["-m", "vmae2.extract", "--model", "vit_tiny_patch16_224",
                                "--weights", str(work / "ft" / "model.safetensors"), "--data_path",
                                str(lab / "test.csv"), "--window", "4", "--stride", "2", "--input_size", "32",
                                "--num_workers", "1", "--output_dir", str(work / "features")],
         {"expect": ("videos extracted",)}),
        ("export to transformers without transformers",
         ["-m", "vmae2.export", "--format", "transformers", "--run", str(work / "ft"), "--out", str(work / "hf")],
         {"expect_rc": 2, "expect": ("transformers is not installed: pip install vmae2[hf]",)}),
        ("export a Hub folder", ["-m", "vmae2.export", "--format", "vmae2", "--run", str(work / "ft"), "--out",
                                 str(work / "hub")], {"expect": ("wrote",)}),
        ("list check", ["-m", "vmae2.data.check", str(pre), "--num_frames", "4", "--bad_out", str(work / "bad.txt")],
         {"expect": ("4 good, 0 bad",)}),
        ("benchmark report", ["-m", "benchmarks.report", str(bench), "--out", str(work / "report")],
         {"expect": (f"report.png skipped: {NO_PLOT}", "wrote")}),
        ("compile report without Triton", ["-m", "benchmarks.gpu.report", "--shape", "ViT-B"],
         {"expect_rc": 2, "expect": ("needs Triton",)}),
        ("benchmark collection", ["-m", "pytest", "benchmarks/", "--collect-only", "-q", "-p", "no:cacheprovider"],
         {}),
    ]
    failed = [name for name, args, kw in checks if run(name, args, env, **kw)]
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _importable(util, name: str) -> bool:
    try:
        return util.find_spec(name) is not None
    except ImportError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
