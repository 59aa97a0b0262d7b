"""The official step against vmae2's, side by side (``official_step.py``'s arms): alternated timing, then where the
time goes op by op. ``python -m benchmarks.profile_step [--size ViT-S] [--batch 2] [--rounds 10] [--steps 3]``.

Same weights, masks and inputs for both arms (CPU, fp32 unless ``--precision``), both built in this process; one
untimed warm-up step each. Timing: ``--rounds`` pairs of steps, official then vmae2, alternated so that a change
of machine load hits both arms; prints each arm's median / min / max and the median of the per-pair ratios with
its range. Profile (``--steps`` steps per arm under ``torch.profiler``): self CPU time per op category (GEMMs,
attention, patch embedding, loss, optimizer, the rest) side by side and the top ops of each arm. Run it on a quiet
machine (``uptime``: load well under 1).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from benchmarks import official_step as O  # noqa: E402  (needs tests/ on the path: the official oracle)

# (category, substrings of the profiler's op name); the first match wins, "other" takes the rest.
CATEGORIES = [
    ("GEMM (mm, addmm, linear)", ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul")),
    ("attention (bmm, softmax, SDPA)", ("aten::bmm", "softmax", "scaled_dot_product", "flash_attention")),
    ("patch embedding (conv / tubelet gather)", ("convolution", "conv3d", "tubelet_gather", "mkldnn_conv")),
    ("loss", ("recon_loss", "mse_loss")),
    ("optimizer", ("adam", "Optimizer.step", "_foreach")),
]


def category(op: str) -> str:
    for name, keys in CATEGORIES:
        if any(k in op for k in keys):
            return name
    return "other"


def alternated_times(steps: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each arm's callable, ``rounds`` times, the arms taking turns."""
    times: dict[str, list[float]] = {arm: [] for arm in steps}
    for _ in range(rounds):
        for arm, step in steps.items():
            start = time.perf_counter()
            step()
            times[arm].append(time.perf_counter() - start)
    return times


def profile_arm(step, steps: int) -> dict[str, float]:
    """Self CPU seconds per op name over ``steps`` calls of ``step.step()``."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step.step()
    out: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        out[e.key] += e.self_cpu_time_total / 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="ViT-S", choices=[s.name for s in O.SIZES])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--precision", default="fp32", choices=sorted(O.PRECISIONS))
    p.add_argument("--rounds", type=int, default=10, help="alternated timed steps per arm (0: no timing)")
    p.add_argument("--steps", type=int, default=3, help="profiled steps per arm (0: no profile)")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    size = next(s for s in O.SIZES if s.name == args.size)
    steps = {arm: O.make_step(arm, size, args.precision, args.batch, torch.device("cpu"))[0]
             for arm in ("official", "vmae2")}
    for step in steps.values():
        step.step()  # warm-up: optimizer state, allocator
    print(f"{size.name}, batch {args.batch}, {args.precision}, 16x224, {torch.get_num_threads()} threads")
    if args.rounds:
        t = alternated_times({arm: step.step for arm, step in steps.items()}, args.rounds)
        for arm, secs in t.items():
            print(f"{arm:9s} median {statistics.median(secs) * 1e3:7.1f} ms/step  (min {min(secs) * 1e3:.1f}, "
                  f"max {max(secs) * 1e3:.1f}, {len(secs)} steps)")
        pairs = sorted(o / v for o, v in zip(t["official"], t["vmae2"]))
        print(f"speed-up official / vmae2: {statistics.median(t['official']) / statistics.median(t['vmae2']):.2f}x "
              f"(ratio of medians); per alternated pair: median {statistics.median(pairs):.2f}x, range "
              f"{pairs[0]:.2f}-{pairs[-1]:.2f}x")
    if not args.steps:
        return 0
    arms = {arm: profile_arm(step, args.steps) for arm, step in steps.items()}
    print(f"\nprofile of {args.steps} steps per arm: self CPU seconds")
    print(f"{'category':42s} {'official':>9s} {'vmae2':>9s}")
    totals = {arm: defaultdict(float) for arm in arms}
    for arm, ops in arms.items():
        for op, sec in ops.items():
            totals[arm][category(op)] += sec
    for name in [c for c, _ in CATEGORIES] + ["other"]:
        print(f"{name:42s} {totals['official'][name]:9.3f} {totals['vmae2'][name]:9.3f}")
    print(f"{'total':42s} {sum(totals['official'].values()):9.3f} {sum(totals['vmae2'].values()):9.3f}")
    for arm, ops in arms.items():
        print(f"\ntop {args.top} ops, {arm}:")
        for op, sec in sorted(ops.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {sec:8.3f}  {op}  [{category(op)}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
