"""The official step against vmae2's, side by side: alternated timing with a bootstrap interval, then where the time
goes op by op, in fp32 and in bf16 autocast; optionally written to a results file.

``python -m benchmarks.profile_step [--size ViT-S ViT-B] [--precision fp32 bf16] [--rounds 12] [--steps 2]
[--official DIR] [--out results.json]``

Same weights, masks and inputs for both arms (``official_step.py``), both built in this process; two untimed
warm-up steps each (vmae2's first step also measures its backend choices). Timing: ``--rounds`` pairs of steps, the
arms alternated and the order within a pair swapped every round, so a change of machine load hits both arms. Per
pair the ratio official / vmae2; reported: its median and a bootstrap 95% interval of that median (resampled
pairs), each arm's median / min / max. Profile (``--steps`` steps per arm under ``torch.profiler``): self CPU time
per op category side by side. ``--official DIR``: the official arm runs the unmodified
``models/modeling_pretrain.py`` of that VideoMAE V2 checkout; default: the restated model of
``oracle/``. The results file records the command, date, machine (CPU model and flags, cores,
threads, load average), versions, every pair, the summaries, the profiles and vmae2's measured backend choices.
Run it on a quiet machine (``uptime``: load well under 1).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks import official_step as O

ROOT = Path(__file__).resolve().parents[1]

# (category, substrings of the profiler's op name); the first match wins, "other" takes the rest.
CATEGORIES = [
    ("GEMM (mm, addmm, linear)", ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul")),
    ("attention (bmm, softmax, SDPA)", ("aten::bmm", "softmax", "scaled_dot_product", "flash_attention")),
    ("patch embedding (conv / tubelet gather)", ("convolution", "conv3d", "tubelet_gather", "mkldnn_conv")),
    ("loss", ("recon_loss", "mse_loss")),
    ("optimizer", ("adam", "Optimizer.step", "_foreach")),
]
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def category(op: str) -> str:
    for name, keys in CATEGORIES:
        if any(k in op for k in keys):
            return name
    return "other"


def alternated_times(steps: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each arm's callable, ``rounds`` times, the arms taking turns (the order reversed every
    other round, so neither arm always runs right after the other)."""
    times: dict[str, list[float]] = {arm: [] for arm in steps}
    order = list(steps)
    for r in range(rounds):
        for arm in (order if r % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            steps[arm]()
            times[arm].append(time.perf_counter() - start)
    return times


def bootstrap_median(values: list[float], resamples: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median of ``values``."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]


def summarize(baseline: list[float], measured: list[float], names: tuple[str, str] = ("official", "vmae2")) -> dict:
    """Per-pair ratios baseline / measured, their median and bootstrap interval, and each arm's ms."""
    ratios = [b / m for b, m in zip(baseline, measured)]
    low, high = bootstrap_median(ratios)
    out = {"ratio_median": statistics.median(ratios), "ratio_ci95": [low, high], "ratios": ratios,
           "ratio_of_medians": statistics.median(baseline) / statistics.median(measured)}
    for name, t in zip(names, (baseline, measured)):
        out[name] = {"median_ms": statistics.median(t) * 1e3, "min_ms": min(t) * 1e3, "max_ms": max(t) * 1e3,
                     "ms": [x * 1e3 for x in t]}
    return out


def profile_arm(step, steps: int) -> dict[str, float]:
    """Self CPU seconds per op name over ``steps`` calls of ``step.step()``."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step.step()
    out: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        out[e.key] += e.self_cpu_time_total / 1e6
    return out


def machine() -> dict:
    """CPU model and the flags that decide GEMM speed, cores, threads, load average, versions."""
    from vmae2_kernels.measure import cpu_name

    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"cpu": cpu_name(), "cpu_flags": [f for f in CPU_FLAGS if f in flags], "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
            "python": platform.python_version(), "torch": torch.__version__, "vmae2_commit": commit,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


ARMS = {"official": ("official", "vmae2"), "eager": ("eager", "compiled")}


def compare(size, precision: str, batch: int, rounds: int, steps: int, official: str | None, top: int,
            baseline: str = "official") -> dict:
    """One size and precision: timing, profile, facts and vmae2's measured choices. ``baseline="eager"``: vmae2
    eager against vmae2 with every block compiled (``--compile on``) instead of the official step against vmae2."""
    from vmae2.training.distributed import compile_blocks
    from vmae2_kernels import measure

    device = torch.device("cpu")
    names = ARMS[baseline]
    built = {name: O.make_step("vmae2" if baseline == "eager" else name, size, precision, batch, device,
                               official_repo=official) for name in names}
    arms = {name: step for name, (step, _) in built.items()}
    out = {"size": size.name, "precision": precision, "batch": batch, "clip": "16x224", "arms": list(names),
           "facts": {name: facts for name, (_, facts) in built.items()}}
    if baseline == "eager":
        compile_blocks(arms["compiled"].model, "on", device)
    for name, step in arms.items():
        start = time.perf_counter()
        for _ in range(2):
            step.step()  # warm-up: optimizer state, allocator, vmae2's measured backend choices, compilation
        out.setdefault("warmup_s", {})[name] = time.perf_counter() - start
    label = out["facts"][names[0]].get("official_model", "vmae2 eager")
    print(f"\n{size.name}, batch {batch}, {precision}, 16x224, {torch.get_num_threads()} threads, {names[0]}: {label}",
          flush=True)
    if rounds:
        t = alternated_times({name: step.step for name, step in arms.items()}, rounds)
        out["timing"] = s = summarize(t[names[0]], t[names[1]], names)
        for name in names:
            print(f"{name:9s} median {s[name]['median_ms']:7.1f} ms/step  (min {s[name]['min_ms']:.1f}, "
                  f"max {s[name]['max_ms']:.1f}, {rounds} steps)")
        print(f"speed-up {names[0]} / {names[1]}, per alternated pair: median {s['ratio_median']:.3f}x, bootstrap "
              f"95% interval {s['ratio_ci95'][0]:.3f}-{s['ratio_ci95'][1]:.3f}x, range {min(s['ratios']):.2f}-"
              f"{max(s['ratios']):.2f}x (ratio of medians {s['ratio_of_medians']:.3f}x)", flush=True)
    if steps:
        ops = {name: profile_arm(step, steps) for name, step in arms.items()}
        cats = {name: defaultdict(float) for name in ops}
        for name, per_op in ops.items():
            for op, sec in per_op.items():
                cats[name][category(op)] += sec / steps
        rows = [c for c, _ in CATEGORIES] + ["other"]
        out["profile_ms_per_step"] = {name: {r: cats[name][r] * 1e3 for r in rows} for name in ops}
        out["top_ops_ms_per_step"] = {name: dict(sorted(((op, sec / steps * 1e3) for op, sec in per_op.items()),
                                                        key=lambda kv: -kv[1])[:top]) for name, per_op in ops.items()}
        print(f"profile, self CPU ms per step (mean of {steps}):\n{'category':42s} {names[0]:>9s} {names[1]:>9s}")
        for r in rows + ["total"]:
            row = {name: sum(cats[name].values()) if r == "total" else cats[name][r] for name in ops}
            print(f"{r:42s} {row[names[0]] * 1e3:9.1f} {row[names[1]] * 1e3:9.1f}")
    out["vmae2_choices"] = measure.choices()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", nargs="+", default=["ViT-S"], choices=[s.name for s in O.SIZES])
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=sorted(O.PRECISIONS))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=12, help="alternated timed pairs of steps (0: no timing)")
    p.add_argument("--steps", type=int, default=2, help="profiled steps per arm (0: no profile)")
    p.add_argument("--top", type=int, default=15, help="top ops per arm kept in the results file")
    p.add_argument("--official", metavar="DIR", help="a VideoMAE V2 checkout: its unmodified model is the baseline")
    p.add_argument("--baseline", choices=sorted(ARMS), default="official",
                   help="eager: vmae2 eager against vmae2 with every block compiled, instead of the official step")
    p.add_argument("--out", metavar="FILE", help="write the results as JSON")
    args = p.parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    if args.official:
        command = command.replace(args.official, "VideoMAEv2")  # the checkout's local path means nothing elsewhere
    results = {"command": "python -m benchmarks.profile_step " + command,
               "date": started.isoformat(timespec="seconds"), "machine": machine(), "runs": []}
    for name in args.size:
        size = next(s for s in O.SIZES if s.name == name)
        for precision in args.precision:
            results["runs"].append(compare(size, precision, args.batch, args.rounds, args.steps, args.official,
                                           args.top, args.baseline))
            if args.out:  # rewritten after every run: an interrupted comparison keeps what it measured
                results["machine"]["load_average_end"] = list(os.getloadavg())
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
