"""The memory plan's counts against the CPU allocator: :func:`vmae2.step_memory.simulate_step` (fake tensors, nothing
allocated) vs a real fp32 training step of the same model, measured by torch.profiler's memory events
(:mod:`benchmarks.memory`, the loss benchmark's meter).

Per checkpointing mode, two numbers each way: **saved**, the bytes the forward (+ the fused loss) still holds when it
returns (what backward will read, plus the loss), and **peak**, the highest bytes allocated during forward +
backward above what existed before (the parameters, their gradients kept from a first step as accumulation keeps
them, so that the peak is the activations', not the gradients' and a CPU convolution's im2col buffer at the end of
backward). ``python -m benchmarks.plan_check`` prints the README's table (ViT-S and ViT-B, 16x224, tube 0.9 /
running cell 0.5, batch 1 and 2; about a minute on 2 cores); ``tests/test_plan.py`` checks smaller cases.
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.memory import cpu_held_bytes, cpu_peak_extra_bytes
from vmae2 import masking
from vmae2.loss import reconstruction_loss
from vmae2.models import create_model
from vmae2.step_memory import simulate_step

MODES = ("none", "attn", "mlp", "every:2", "full")


def check(name: str, batch: int, modes=MODES, *, num_frames: int = 16, img_size: int = 224) -> list[dict]:
    """One row per mode: ``saved_pred``/``saved_meas`` and ``peak_pred``/``peak_meas`` in bytes (see the module)."""
    kw = dict(num_frames=num_frames, img_size=img_size)
    torch.manual_seed(0)
    model = create_model(name, **kw)
    g = torch.Generator().manual_seed(0)
    video = torch.randn(batch, 3, num_frames, img_size, img_size, generator=g)
    enc = masking.tube_ids(batch, model.grid, 0.9, generator=g)
    dec = masking.running_cell_ids(batch, model.grid, 0.5, generator=g)

    def loss():
        return reconstruction_loss(model(video, enc, dec), video, enc, dec, patch_size=model.patch_size)

    rows = []
    for mode in modes:
        model.encoder.use_checkpoint = model.decoder.use_checkpoint = mode
        loss().backward()  # gradients exist from here on; the native ops are loaded
        saved, peak = cpu_held_bytes(loss), cpu_peak_extra_bytes(lambda: loss().backward())
        with torch.device("meta"):
            twin = create_model(name, use_checkpoint=mode, **kw)
        sim = simulate_step(twin, tuple(video.shape), enc.shape[1], dec.shape[1], grads_allocated=True)
        rows.append(dict(model=name, batch=batch, mode=mode, saved_pred=sim.saved_bytes, saved_meas=saved,
                         peak_pred=sim.peak, peak_meas=peak))
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: MiB predicted / measured and their ratio, per row."""
    mib = 2 ** 20
    out = ["| model | batch | mode | saved: plan / measured MiB | ratio | peak: plan / measured MiB | ratio |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model'].split('_')[2]} | {r['batch']} | {r['mode']} | {r['saved_pred'] / mib:.1f} / "
                   f"{r['saved_meas'] / mib:.1f} | {r['saved_pred'] / r['saved_meas']:.3f} | "
                   f"{r['peak_pred'] / mib:.1f} / {r['peak_meas'] / mib:.1f} | {r['peak_pred'] / r['peak_meas']:.3f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plan_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="small,base", help="sizes: pretrain_videomae_{size}_patch16_224")
    parser.add_argument("--batches", default="1,2")
    args = parser.parse_args(argv)
    rows = [r for size in args.models.split(",") for b in args.batches.split(",")
            for r in check(f"pretrain_videomae_{size}_patch16_224", int(b))]
    print(table(rows))
    worst = max(abs(r[k + "_pred"] / r[k + "_meas"] - 1) for r in rows for k in ("saved", "peak"))
    print(f"largest deviation: {worst:.1%}")
    return 0 if worst <= 0.10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
