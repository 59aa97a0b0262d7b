"""The porting recipes of ``docs/porting.md`` at ViT-B size: ``original_step`` against ``kernel_step`` on CPU,
alternated (forward + backward, fp32, batch 2, one thread), and the bytes the replaced lines move on a GPU forward
pass under bf16 autocast with the time they would take at HBM bandwidth (PREDICTED).

``python -m benchmarks.port_steps [--rounds 3] [--no-time]``. The byte counts are a tally, tensor by tensor, of what
each replaced line reads and writes (each tensor once per op that touches it; fp32 where type promotion makes it
fp32); they leave out launch gaps and the backward pass.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from pathlib import Path

import torch

from benchmarks.profile_step import alternated_times
from benchmarks.gpu.roofline import GPUS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
B = 2  # clips per timed step


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def arms() -> dict[str, dict]:
    """Per recipe, ``{"original": step, "kernel": step}`` at ViT-B size (encoder 768 x 12)."""
    torch.manual_seed(0)
    image, st, v1 = load("port_image_mae"), load("port_spatiotemporal_mae"), load("port_videomae_v1")
    m1 = image.TinyImageMAE(img_size=224, patch_size=16, dim=768, dec_dim=512, depth=12, dec_depth=8, heads=16)
    imgs, noise = torch.randn(B, 3, 224, 224), torch.rand(B, 196)
    m2 = st.TinySpatiotemporalMAE(img_size=224, patch_size=16, num_frames=16, tubelet_size=2, dim=768, dec_dim=512,
                                  depth=12, dec_depth=4, heads=16)
    video, vnoise = torch.randn(B, 3, 16, 224, 224), torch.rand(B, 8 * 196)
    m3 = v1.TinyVideoMAE(img_size=224, patch_size=16, num_frames=16, tubelet_size=2, dim=768, dec_dim=384, depth=12,
                         dec_depth=4, heads=16)
    mask = v1.tube_mask(B, m3.grid, 0.9)
    visible = int((~mask[0]).sum())
    return {"image MAE, 224 px": {"original": lambda: image.original_step(m1, imgs, noise, 0.75),
                                  "kernel": lambda: image.kernel_step(m1, imgs, noise, 0.75)},
            "spatiotemporal MAE, 16x224": {"original": lambda: st.original_step(m2, video, vnoise, 0.9),
                                           "kernel": lambda: st.kernel_step(m2, video, vnoise, 0.9)},
            "VideoMAE v1, 16x224": {"original": lambda: v1.original_step(m3, video, mask),
                                    "kernel": lambda: v1.kernel_step(m3, video, mask, visible)}}


def step(fn):
    return lambda: fn()[1].backward()


def forward_bytes() -> dict[str, tuple[int, int]]:
    """``recipe -> (original bytes, kernel bytes)`` of the replaced lines, GPU forward, bf16 autocast."""
    out = {}
    # image MAE-Base, batch 64, 49 of 196 patches kept
    b, n, k, c, d, p = 64, 196, 49, 768, 512, 16 * 16 * 3
    img, t = b * 3 * 224 * 224 * 4, b * n * p * 4
    original = (img + b * n * c * 2 + b * n * c * 2 + b * n * c * 4 + 2 * b * k * c * 4  # embed all, + pos, gather
                + b * k * d * 2 + b * n * d * 4 + 2 * b * n * d * 4 + 4 * b * (n + 1) * d * 4  # cat, un-shuffle, cls
                + 2 * img + 2 * t + 2 * t + b * n * p * 2 + t + t + 2 * t + t)  # patchify, normalise, MSE
    kernel = (2 * b * k * p * 4 + b * k * p * 4 + b * k * c * 2 + 2 * b * k * c * 2
              + b * (k + 1) * d * 2 + b * (n + 1) * d * 4 + 2 * b * (n + 1) * d * 4  # ordered: one more copy
              + b * n * p * 2 + img)
    out["image MAE-Base, batch 64"] = (original, kernel)
    # spatiotemporal MAE, ViT-L, 16x224, batch 8, 156 of 1568 kept
    b, n, k, c, d, p = 8, 1568, 156, 1024, 512, 2 * 16 * 16 * 3
    vid, t = b * 3 * 16 * 224 * 224 * 4, b * n * p * 4
    original = (vid + b * n * c * 2 + b * n * c * 2 + b * n * c * 4 + 2 * b * n * c * 4 + 2 * b * k * c * 4
                + b * k * d * 2 + b * n * d * 4 + 2 * b * n * d * 4 + 4 * b * n * d * 4 + 2 * b * (n + 1) * d * 4
                + 2 * vid + 2 * t + 2 * t + b * n * p * 2 + t + t + 2 * t + t)
    kernel = (2 * b * k * p * 4 + b * k * p * 4 + b * k * c * 2 + 2 * b * k * c * 2
              + b * (k + 1) * d * 2 + b * (n + 1) * d * 4 + 2 * b * (n + 1) * d * 4 + b * n * p * 2 + vid)
    out["spatiotemporal MAE, ViT-L 16x224, batch 8"] = (original, kernel)
    # VideoMAE v1, ViT-B, 16x224, batch 32, 160 of 1568 visible
    b, n, k, c, d, p = 32, 1568, 160, 768, 384, 2 * 16 * 16 * 3
    m, vid, t = n - k, b * 3 * 16 * 224 * 224 * 4, b * n * p * 4
    original = (vid + b * n * c * 2 + b * n * c * 2 + b * n * c * 4 + b * n * c * 4 + b * k * c * 4
                + 2 * b * n * d * 4 + 2 * b * k * d * 4 + 2 * b * m * d * 4 + 2 * b * n * d * 4
                + 2 * vid + 2 * t + 2 * t + 2 * t + t + b * m * p * 4 + b * m * p * 2 + b * m * p * 8 + b * m * p * 4)
    kernel = (2 * b * k * p * 4 + b * k * p * 4 + b * k * c * 2 + 2 * b * k * c * 2 + b * k * d * 2 + b * n * d * 4
              + b * m * p * 2 + vid * m // n)
    out["VideoMAE v1, ViT-B 16x224, batch 32"] = (original, kernel)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.port_steps", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="alternated timed steps per arm")
    p.add_argument("--no-time", action="store_true", help="only the byte tally")
    args = p.parse_args(argv)
    if not args.no_time:
        torch.set_num_threads(1)
        for recipe, pair in arms().items():
            times = alternated_times({arm: step(fn) for arm, fn in pair.items()}, args.rounds)
            print(f"{recipe}: " + ", ".join(f"{arm} {statistics.median(s):.2f} s" for arm, s in times.items())
                  + f" (median of {args.rounds} alternated, batch {B}, 1 thread)", flush=True)
    for recipe, (original, kernel) in forward_bytes().items():
        saved = original - kernel
        times = ", ".join(f"{gpu} {saved / spec.hbm_bytes_per_s * 1e3:.2f} ms" for gpu, spec in GPUS.items())
        print(f"{recipe}: {original / 1e9:.2f} GB -> {kernel / 1e9:.2f} GB, PREDICTED saving {times}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
