"""pytest-benchmark of one whole pretraining step (forward, backward, AdamW): ``pytest
benchmarks/test_step_benchmarks.py --benchmark-only``.

Two comparisons, each arm its own benchmark, grouped so the pytest-benchmark table puts them side by side:

* ``test_dual_masking_step``: vmae2 with running-cell decoder masking (ratio 0.5, ``dual``) against vmae2 without
  it (``v1``: ``decoder_mask=None``, every encoder-masked token decoded). Same model, inputs and attention
  backend; the ratio ``v1 / dual`` is the dual-masking speed-up.
* ``test_official_step``: vmae2 against the official step (``official_step.py``: boolean gathers, explicit
  softmax attention, full fp32 target, ``loss.item()`` per step), both with dual masking, on identical weights,
  masks and inputs. The ratio ``official / vmae2`` is vmae2's speed-up; the first-call losses must agree.

Every arm: inputs built outside the timed region; one untimed first call (optimizer state, allocator growth,
autotune) and one untimed call that measures memory; then ``benchmark.pedantic`` rounds of one step closed by
``torch.cuda.synchronize()``. ``extra_info`` holds ms/step, clips/s, the model TFLOP per step and achieved TFLOP/s,
peak memory (CUDA: ``max_memory_allocated`` of the step, absolute and above the pre-step level; CPU: process RSS
sampled every 0.5 ms during the step, absolute and above the pre-step level, after ``malloc_trim``: approximate;
the absolute peak is the comparable number: the official step keeps last step's gradients through the forward, and
so does vmae2 on a CPU (``vmae2.training.optim.frees_grads_before_backward``); on a GPU it frees them after the step),
the attention and token-op backends, and, on the second arm of each pair, the ratio of the two medians (also
written back into the first arm's ``extra_info``). A table with the ratios is printed at the end of the run,
``--benchmark-only`` included.

CPU (default quick mode): ViT-S and ViT-B, batch 2, 16x224, fp32 and bf16 autocast, 3 rounds. CUDA or
``VMAE2_BENCH_FULL=1``: ViT-S/B/L/H/g at the official per-GPU batch (32 videos x ``num_sample`` 4 = 128 clips), bf16 autocast on CUDA,
activation checkpointing for ViT-H and ViT-g in both arms (as the official H/g scripts); a size that runs out of
memory is skipped with the reason. Environment: ``VMAE2_BENCH_BATCH=<n>``, ``VMAE2_BENCH_PRECISION=fp32,bf16,...``,
``VMAE2_BENCH_ROUNDS=<n>``, ``VMAE2_BENCH_THREADS=<n>`` (see ``conftest.py``).
"""
from __future__ import annotations

import ctypes
import gc
import os
import sys
import threading
import time

import pytest
import torch

from benchmarks import official_step as O
from oracle.tolerances import FP_TOL  # the shared tolerance table
from vmae2.flops import mfu, peak_flops

# -- configuration ------------------------------------------------------------------------------------------

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE.type == "cuda"
FULL = ON_CUDA or os.environ.get("VMAE2_BENCH_FULL") == "1"
OFFICIAL_CLIPS_PER_GPU = 128  # every released pretraining script: 32 videos x num_sample 4 (reference 5.2)
BATCH = int(os.environ.get("VMAE2_BENCH_BATCH", str(OFFICIAL_CLIPS_PER_GPU) if FULL else "2"))
PRECISIONS = os.environ.get("VMAE2_BENCH_PRECISION", "bf16" if ON_CUDA else "fp32,bf16").split(",")
ROUNDS = int(os.environ.get("VMAE2_BENCH_ROUNDS", "10" if ON_CUDA else "3"))
WARMUP_ROUNDS = 2 if ON_CUDA else 1
for _p in PRECISIONS:
    if _p not in O.PRECISIONS:
        raise ValueError(f"VMAE2_BENCH_PRECISION: {_p!r} is unknown; use {sorted(O.PRECISIONS)}")


SIZES = O.SIZES if FULL else O.SIZES[:2]

# (comparison, baseline arm, measured arm): the ratio is median(baseline) / median(measured).
COMPARISONS = {"dual_masking": ("v1", "dual"), "vs_official": ("official", "vmae2")}

# Module-level results: (comparison, size, precision) -> arm -> extra_info (or a skip reason string).
RESULTS: dict[tuple[str, str, str], dict[str, object]] = {}


def cases(comparison: str) -> list:
    """Arms in order (baseline first, so the second arm can compute the ratio), per size and precision."""
    out = []
    for size in SIZES:
        for precision in PRECISIONS:
            for arm in COMPARISONS[comparison]:
                out.append(pytest.param(size, precision, arm, id=f"{size.name}-{precision}-{arm}"))
    return out


# -- timing and memory --------------------------------------------------------------------------------------

def sync() -> None:
    if ON_CUDA:
        torch.cuda.synchronize()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def memory_of(fn) -> dict:
    """Peak memory of one (untimed) call of ``fn``, in MiB: absolute, and above the level just before the call."""
    if ON_CUDA:
        sync()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        sync()
        peak = torch.cuda.max_memory_allocated()
        return {"peak_mem_mib": peak / 2**20, "peak_extra_mem_mib": (peak - before) / 2**20,
                "mem_kind": "torch.cuda.max_memory_allocated"}
    if not os.path.exists("/proc/self/statm"):
        return {"peak_mem_mib": None, "peak_extra_mem_mib": None, "mem_kind": None}
    gc.collect()
    _malloc_trim()
    before = _rss_bytes()
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    peak[0] = max(peak[0], _rss_bytes())
    return {"peak_mem_mib": peak[0] / 2**20, "peak_extra_mem_mib": (peak[0] - before) / 2**20,
            "mem_kind": "process RSS sampled every 0.5 ms (approximate)"}


def ratio_of(comparison: str, key: tuple, info: dict) -> None:
    """On the second arm of a pair: median(baseline) / median(this arm) into both arms' ``extra_info``."""
    base_arm, _ = COMPARISONS[comparison]
    base = RESULTS.get(key, {}).get(base_arm)
    if not isinstance(base, dict):
        info["speedup"] = None
        return
    speedup = base["ms_per_step"] / info["ms_per_step"]
    info["speedup"] = base["speedup"] = speedup
    info["speedup_of"] = base["speedup_of"] = f"{base_arm} / {info['arm']} (median step time)"
    if comparison == "dual_masking":
        flops = base["model_tflop_per_step"] / info["model_tflop_per_step"]
        info["model_flops_ratio"] = base["model_flops_ratio"] = flops
    if comparison == "vs_official":  # like with like: same weights, masks, inputs -> same first loss
        a, b = base["first_loss"], info["first_loss"]
        info["first_loss_rel_diff"] = base["first_loss_rel_diff"] = abs(a - b) / abs(a)


def run_arm(benchmark, comparison: str, size: O.Size, precision: str, arm: str) -> None:
    key = (comparison, size.name, precision)
    RESULTS.setdefault(key, {})
    holder = {}
    try:
        try:
            holder["step"], facts = O.make_step(arm, size, precision, BATCH, DEVICE)
            step = holder["step"]
            first = step.step()  # untimed: optimizer state, allocator growth, autotune
            sync()
        except torch.cuda.OutOfMemoryError as exc:
            reason = f"out of memory at batch {BATCH} ({str(exc).splitlines()[0]})"
            RESULTS[key][arm] = reason
            pytest.skip(reason)
        first_loss = float(first)  # the vmae2 step returns a tensor: read it here, outside the timing
        memory = memory_of(step.step)

        def one_step():
            step.step()
            sync()

        benchmark.group = f"step {comparison} {size.name} {precision} B={BATCH}"
        benchmark.pedantic(one_step, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)
        if benchmark.stats is None:  # --benchmark-disable: ran once as a smoke test
            return
        sec = benchmark.stats.stats.median
        info = dict(comparison=comparison, arm=arm, size=size.name, model=size.model, batch=BATCH,
                    precision=precision, device=torch.cuda.get_device_name() if ON_CUDA else "cpu",
                    torch_threads=torch.get_num_threads(), activation_checkpointing=size.checkpoint,
                    rounds=ROUNDS, ms_per_step=sec * 1e3, clips_per_s=BATCH / sec,
                    is_baseline=arm == COMPARISONS[comparison][0],
                    achieved_tflops=facts["model_tflop_per_step"] / sec, first_loss=first_loss, **facts, **memory)
        peak = peak_flops(torch.device("cuda"), precision) if ON_CUDA else None
        info["mfu"] = mfu(facts["model_tflop_per_step"] * 1e12, sec, peak)
        if arm == COMPARISONS[comparison][1]:
            ratio_of(comparison, key, info)
        benchmark.extra_info.update(info)
        RESULTS[key][arm] = benchmark.extra_info  # the same dict: a later ratio lands in the JSON too
        if comparison == "vs_official" and info.get("first_loss_rel_diff") is not None:
            # two computations of the same math; a whole model under autocast: growth 2 (oracle/tolerances.py)
            dtype = O.PRECISIONS[precision] or torch.float32
            tol = FP_TOL[dtype][0] * (1 if dtype == torch.float32 else 2)
            assert info["first_loss_rel_diff"] < tol, f"the two arms disagree on the loss: {info}"
    finally:
        holder.clear()
        gc.collect()
        if ON_CUDA:
            torch.cuda.empty_cache()


# -- the benchmarks -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,precision,arm", cases("dual_masking"))
def test_dual_masking_step(benchmark, size, precision, arm):
    """vmae2 full step with (``dual``) and without (``v1``) running-cell decoder masking."""
    run_arm(benchmark, "dual_masking", size, precision, arm)


@pytest.mark.parametrize("size,precision,arm", cases("vs_official"))
def test_official_step(benchmark, size, precision, arm):
    """vmae2 full step against the official-style step, dual masking, identical weights / masks / inputs."""
    run_arm(benchmark, "vs_official", size, precision, arm)


# -- summary table (printed even with --benchmark-only and -q) ----------------------------------------------

class _StepSummary:
    def pytest_terminal_summary(self, terminalreporter):
        if not RESULTS:
            return
        tr = terminalreporter
        tr.section("vmae2 training-step benchmarks (one full step: forward, backward, AdamW)")
        tr.write_line(f"{'comparison':13s} {'size':6s} {'prec':5s} {'arm':9s} {'batch':>5s} {'ms/step':>10s} "
                      f"{'clips/s':>8s} {'GMACs':>7s} {'TFLOP/s':>8s} {'peak MiB':>9s} {'+MiB':>8s} {'speedup':>8s}  "
                      "attention")
        for (comparison, size, precision), arms in RESULTS.items():
            for arm in COMPARISONS[comparison]:
                r = arms.get(arm)
                if r is None:
                    continue
                if not isinstance(r, dict):
                    tr.write_line(f"{comparison:13s} {size:6s} {precision:5s} {arm:9s} skipped: {r}")
                    continue

                def num(v, fmt):
                    return "" if v is None else format(v, fmt)

                tr.write_line(
                    f"{comparison:13s} {size:6s} {precision:5s} {arm:9s} {r['batch']:5d} {r['ms_per_step']:10.1f} "
                    f"{r['clips_per_s']:8.2f} {r['fwd_gmacs_per_clip']:7.2f} {r['achieved_tflops']:8.3f} "
                    f"{num(r['peak_mem_mib'], '9.0f'):>9s} "
                    f"{num(r['peak_extra_mem_mib'], '8.0f'):>8s} "
                    f"{num(r.get('speedup'), '7.2f') + 'x' if r.get('speedup') else '':>8s}  {r['attention']}")
        tr.write_line("speedup = median step time of the baseline arm (v1, official) / that of the vmae2 arm "
                      "(dual, vmae2); GMACs = forward multiply-accumulates per clip (official: the paper's count, "
                      "every tubelet embedded); peak memory on CPU is sampled RSS (approximate)")


@pytest.fixture(autouse=True, scope="module")
def _register_summary(request):
    manager = request.config.pluginmanager
    if not manager.has_plugin("vmae2-step-summary"):
        manager.register(_StepSummary(), "vmae2-step-summary")
    yield
