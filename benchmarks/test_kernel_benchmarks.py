"""pytest-benchmark suite of the vmae2_kernels token ops: ``pytest benchmarks/ --benchmark-only``.

Three groups of benchmarks:

* ``test_op``: every public op (forward) x provider x VideoMAE V2 shape. Providers: ``torch`` (the eager
  reference through ``backend="torch"``), ``compiled`` (``torch.compile`` of the reference, inductor),
  ``triton`` (CUDA only), ``cuda`` / ``cpp`` (the native extension, when built).
* ``test_mask_construction``: building one batch of encoder (tube) / decoder (running-cell) masks with the
  public API against the official per-sample numpy generators plus the official engine's collate /
  ``.to(device).flatten(1).to(torch.bool)`` (``oracle/``).
* ``test_loss_fwd_bwd``: the fused loss forward + backward against the official eager loss (fp32 target for all
  N tokens, boolean selection, MSE; ``oracle/``), with the peak extra memory of one forward + backward
  (bytes allocated above the inputs; CPU: ``benchmarks/memory.py``, CUDA: the caching allocator's peak) in
  ``extra_info``.

Timing (STYLE.md section 7): one untimed call, then ``benchmark.pedantic`` rounds of ``inner`` back-to-back
calls closed by one ``torch.cuda.synchronize()`` (nothing to sync on CPU). Per-call time, explicit bytes moved and
GB/s go to ``benchmark.extra_info``. Inputs are built outside the timed region.

CPU (default quick mode): batch 2, ViT-B only, fp32. ``VMAE2_BENCH_FULL=1``: batch 32 and ViT-B/L/g (slow on
CPU). On CUDA: batch 32, ViT-B/L/g, bf16 activations. ``VMAE2_BENCH_BATCH=<n>`` overrides the batch.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

import oracle as O  # the official generators and loss
import vmae2_kernels as K
from benchmarks import cases as bench_cases
from benchmarks.memory import cpu_peak_extra_bytes
from benchmarks.gpu.roofline import SHAPES as ROOFLINE_SHAPES
from benchmarks.gpu.roofline import Shape
from oracle.tolerances import assert_close_fp  # the shared tolerance table
from vmae2_kernels import dispatch, ops
from vmae2_kernels import reference as R

# -- configuration ------------------------------------------------------------------------------------------

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE.type == "cuda"
FULL = ON_CUDA or os.environ.get("VMAE2_BENCH_FULL") == "1"
BATCH = int(os.environ.get("VMAE2_BENCH_BATCH", "32" if FULL else "2"))
DTYPE = torch.bfloat16 if ON_CUDA else torch.float32  # activations (x, x_vis, pred); pos/mask token/video fp32
TUBELET = 2
ENC_RATIO, DEC_RATIO = 0.9, 0.5
CUDA_INNER, CUDA_ROUNDS, CUDA_WARMUP = 50, 20, 2
SETTING = bench_cases.Setting(DEVICE, BATCH, DTYPE)

TRITON_ON_CPU = ("Triton kernels are benchmarked on CUDA only; on CPU they run only under the interpreter "
                 "(TRITON_INTERPRET=1), whose timings say nothing about speed")
COMPILED_ON_CPU = "torch.compile on this CPU is slow to compile; the compiled provider runs the smallest shape only"


ALL_SHAPES = list(ROOFLINE_SHAPES.values())  # ViT-B, ViT-L, ViT-g: the official 16x224 configurations
# The numbers of the official configurations (reference sections 1.2, 1.3, 2.6).
assert [(s.num_tokens, s.num_visible, s.num_dec, s.pred_dim) for s in ALL_SHAPES] == [
    (1568, 160, 784, 1536), (1568, 160, 784, 1536), (2048, 208, 1024, 1176)]
SHAPES = ALL_SHAPES if FULL else ALL_SHAPES[:1]
SMALLEST = ALL_SHAPES[0].name
SHAPE_IDS = [s.name for s in SHAPES]

OPS = ["token_gather", "token_scatter", "tubelet_gather", "decoder_input", "running_cell_ids", "tube_ids", "recon_loss"]
PROVIDERS = ["torch", "compiled", "triton", "cuda", "cpp"]


def sync() -> None:
    if ON_CUDA:
        torch.cuda.synchronize()


# -- providers ----------------------------------------------------------------------------------------------

def skip_unless_backend(provider: str, *ops_needed: str) -> None:
    """Skip with the dispatcher's reasons when ``provider`` (triton / cuda / cpp) cannot run the ops here."""
    if provider == "triton" and not ON_CUDA:
        pytest.skip(TRITON_ON_CPU)
    reasons = []
    for op in ops_needed:
        reasons += [r for r in dispatch.not_supported_reasons(provider, op, DEVICE.type) if r not in reasons]
    if reasons:
        pytest.skip(f"{provider}: " + "; ".join(reasons))


def compile_fn(fn, shape: Shape):
    """``torch.compile`` (inductor, static shapes) of ``fn``; compiling happens on the first (untimed) call."""
    if not ON_CUDA and shape.name != SMALLEST:
        pytest.skip(COMPILED_ON_CPU)
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


# -- timing -------------------------------------------------------------------------------------------------

def plan(fn) -> tuple[int, int, int]:
    """``(inner, rounds, warmup_rounds)``: STYLE section 7 on CUDA; on CPU sized from one timed call."""
    if ON_CUDA:
        return CUDA_INNER, CUDA_ROUNDS, CUDA_WARMUP
    t0 = time.perf_counter()
    fn()
    dt = max(time.perf_counter() - t0, 1e-7)
    inner = int(min(50, max(1, 2e-3 // dt)))
    rounds = int(min(50, max(5, 0.4 // (dt * inner))))
    return inner, rounds, 1


def do_bench_us(fn) -> float | None:
    """``triton.testing.do_bench`` median (clears L2 between reps) as a cross-check of the per-call time."""
    try:
        import triton.testing
        return 1e3 * float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    except Exception:  # informative only
        return None


def timed(benchmark, bench_rows, fn, *, op: str, provider: str, shape: Shape, nbytes: int, **extra) -> None:
    """Untimed first call, then rounds of back-to-back calls closed by one sync; records per-call metrics."""
    fn()  # compile / autotune / allocator growth
    sync()
    inner, rounds, warmup = plan(fn)

    def many():
        for _ in range(inner):
            fn()
        sync()

    benchmark.group = f"{op} {shape.name} B={BATCH}"
    benchmark.pedantic(many, rounds=rounds, warmup_rounds=warmup, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable: ran once as a smoke test
        return
    per_call = benchmark.stats.stats.median / inner
    info = dict(op=op, provider=provider, shape=shape.name, batch=BATCH, dtype=str(DTYPE).replace("torch.", ""),
                device=torch.cuda.get_device_name() if ON_CUDA else "cpu", calls_per_round=inner,
                us_per_call=per_call * 1e6, bytes=int(nbytes), gbps=nbytes / per_call / 1e9, **extra)
    if ON_CUDA:
        info["do_bench_us"] = do_bench_us(fn)
    benchmark.extra_info.update(info)
    bench_rows.append(info)


def check_close(out, ref) -> None:
    """Non-timed sanity check of a provider's output against the eager reference."""
    out, ref = out.detach(), ref.detach()
    if out.dtype in (torch.int64, torch.bool):
        assert torch.equal(out, ref)  # ids and masks
    else:
        dtype = max(out.dtype, DTYPE, key=lambda d: torch.finfo(d).eps)  # the precision the inputs carry
        # low precision: compiled / fused code may skip an intermediate rounding the eager reference does (growth 2)
        assert_close_fp(out.float(), ref.float(), dtype, growth=1 if dtype == torch.float32 else 2)


# -- 1. every op x provider x shape -------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("op", OPS)
def test_op(benchmark, bench_rows, op, provider, shape):
    if provider == "compiled":
        compiled = compile_fn(getattr(R, op), shape)  # may skip: before building the inputs
        case = bench_cases.build_case(op, shape, SETTING)
        fn = case.reference(compiled)
    else:
        if provider != "torch":
            skip_unless_backend(provider, op)
        case = bench_cases.build_case(op, shape, SETTING)
        fn = case.public(provider)
    if provider != "torch":
        check_close(fn(), case.public("torch")())
    timed(benchmark, bench_rows, fn, op=op, provider=provider, shape=shape, nbytes=case.nbytes)


# -- 2. mask construction: public API vs the official per-sample numpy generators ---------------------------

def check_numpy_generators(shape: Shape) -> None:
    """The official generators build the masks whose kept ids our ops return (not timed)."""
    t, m = shape.grid[0], shape.masked_per_frame
    rc = O.RunningCellGenerator(shape.grid, DEC_RATIO)
    for p in range(4):
        ours = ops.running_cell_ids(torch.tensor([p]), *shape.grid, shape.masked_per_cell, "torch")[0]
        assert torch.equal(ours, torch.nonzero(torch.as_tensor(rc.row(p)).flatten() == 0).flatten())
    frame = O.TubeGenerator(shape.grid, ENC_RATIO)()[0]
    keys = torch.as_tensor(1.0 - frame, dtype=torch.float32)[None]  # masked positions get the smallest keys
    ours = ops.tube_ids(keys, t, m, "torch")[0]
    expected = torch.nonzero(torch.as_tensor(np.tile(frame, t)) == 0).flatten()
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("provider", ["official_numpy", "torch", "triton"])
@pytest.mark.parametrize("kind", ["tube", "running_cell"])
def test_mask_construction(benchmark, bench_rows, kind, provider, shape):
    """One batch of masks: our ids (RNG draw included) vs the official numpy generators + collate + bool."""
    op = f"{kind}_mask_batch"
    if provider == "official_numpy":
        check_numpy_generators(shape)
        np.random.seed(0)
        if kind == "tube":
            gen = O.TubeGenerator(shape.grid, ENC_RATIO)
        else:
            gen = O.RunningCellGenerator(shape.grid, DEC_RATIO)
        fn = lambda: O.batch_masks([gen() for _ in range(BATCH)], DEVICE)  # noqa: E731
        nbytes = BATCH * shape.num_tokens * bench_cases.esize(torch.bool)  # the bool mask it produces on the device
    else:
        if provider != "torch":
            skip_unless_backend(provider, "tube_ids" if kind == "tube" else "running_cell_ids")
        torch.manual_seed(0)
        if kind == "tube":
            fn = lambda: K.tube_ids(BATCH, shape.grid, ENC_RATIO, device=DEVICE, backend=provider)  # noqa: E731
            nbytes = BATCH * shape.hw * 4 + BATCH * shape.num_visible * bench_cases.esize(torch.int64)
        else:
            fn = lambda: K.running_cell_ids(BATCH, shape.grid, DEC_RATIO, device=DEVICE, backend=provider)  # noqa
            nbytes = BATCH * bench_cases.esize(torch.int64) + BATCH * shape.num_dec * bench_cases.esize(torch.int64)
    timed(benchmark, bench_rows, fn, op=op, provider=provider, shape=shape, nbytes=nbytes)


# -- 3. fused loss forward + backward vs the official eager loss --------------------------------------------

def fused_with_mask(pred, video, dec_ids, enc_mask, patch):
    """What ``recon_loss(..., enc_mask)`` does in eager, for the compiled provider: weights gathered, then the loss."""
    weights = torch.gather(enc_mask, 1, dec_ids).float()
    return R.recon_loss(pred, video, dec_ids, weights, patch, TUBELET, 1, bench_cases.MEAN, bench_cases.STD)


def peak_extra_bytes(fn) -> tuple[int, str]:
    """``(peak bytes above the inputs during one call, how it was measured)``; not timed."""
    if not ON_CUDA:
        return cpu_peak_extra_bytes(fn), "torch.profiler memory events (CPU allocator)"
    sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    sync()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak, "torch.cuda.max_memory_allocated"


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("provider", ["official", "torch", "compiled", "triton", "cuda", "cpp"])
def test_loss_fwd_bwd(benchmark, bench_rows, provider, shape):
    if provider in ("triton", "cuda", "cpp"):
        skip_unless_backend(provider, "recon_loss", "recon_loss_backward")
    compiled = compile_fn(fused_with_mask, shape) if provider == "compiled" else None
    N, p = shape.num_tokens, shape.patch
    vis_ids, dec_ids = bench_cases.mask_ids(shape, SETTING)
    enc_mask = torch.ones(BATCH, N, dtype=torch.bool, device=DEVICE).scatter_(1, vis_ids, False)
    dec_mask = torch.ones(BATCH, N, dtype=torch.bool, device=DEVICE).scatter_(1, dec_ids, False)
    pred = bench_cases.randn(SETTING, BATCH, shape.num_dec, shape.pred_dim, dtype=DTYPE, seed=1).requires_grad_(True)
    video = bench_cases.make_video(shape, SETTING)

    def loss_of(name):
        if name == "official":
            return lambda: O.official_loss(pred, video, enc_mask, dec_mask, p)
        if name == "compiled":
            return lambda: compiled(pred, video, dec_ids, enc_mask, p)
        return lambda: K.recon_loss(pred, video, dec_ids, enc_mask, patch_size=p, tubelet_size=TUBELET,
                                    target="videomae", mean=bench_cases.MEAN, std=bench_cases.STD, backend=name)

    loss = loss_of(provider)
    fn = lambda: torch.autograd.grad(loss(), pred)[0]  # noqa: E731  (no .grad accumulation in the timed call)
    if provider != "official":  # same loss and gradient as the official one
        check_close(loss(), loss_of("official")())
        check_close(fn(), torch.autograd.grad(loss_of("official")(), pred)[0])
    nbytes = bench_cases.recon_fwd_bwd_bytes(shape, BATCH, DTYPE, video.dtype)
    peak, meter = peak_extra_bytes(fn)  # one untimed call; the gradient it returns (B*Nd*P values) is included
    timed(benchmark, bench_rows, fn, op="recon_loss_fwd_bwd", provider=provider, shape=shape, nbytes=nbytes,
          peak_extra_mem_mib=peak / 2 ** 20, peak_extra_mem_bytes=peak, peak_mem_meter=meter,
          grad_mib=pred.numel() * pred.element_size() / 2 ** 20)
