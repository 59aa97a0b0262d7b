"""pytest-benchmark suite of the vmae2_kernels token ops: ``pytest benchmarks/ --benchmark-only``.

Three groups of benchmarks:

* ``test_op``: every public op (forward) x provider x VideoMAE V2 shape. Providers: ``torch`` (the eager
  reference through ``backend="torch"``), ``compiled`` (``torch.compile`` of the reference, inductor),
  ``triton`` (CUDA only), ``cuda`` / ``cpp`` (the native extension, when built).
* ``test_mask_construction``: building one batch of encoder (tube) / decoder (running-cell) masks with the
  public API against a numpy re-statement of the official per-sample generators plus the official engine's
  collate / ``.to(device).flatten(1).to(torch.bool)``.
* ``test_loss_fwd_bwd``: the fused loss forward + backward against an official-style eager loss (fp32 target
  for all N tokens, boolean selection, MSE), with the peak extra memory of one forward + backward (bytes allocated
  above the inputs; CPU: torch.profiler memory events, CUDA: the caching allocator's peak) in ``extra_info``.

Timing (STYLE.md section 7): one untimed call, then ``benchmark.pedantic`` rounds of ``inner`` back-to-back
calls closed by one ``torch.cuda.synchronize()`` (nothing to sync on CPU). Per-call time, explicit bytes moved and
GB/s go to ``benchmark.extra_info``. Inputs are built outside the timed region.

CPU (default quick mode): batch 2, ViT-B only, fp32. ``VMAE2_BENCH_FULL=1``: batch 32 and ViT-B/L/g (slow on
CPU). On CUDA: batch 32, ViT-B/L/g, bf16 activations. ``VMAE2_BENCH_BATCH=<n>`` overrides the batch.
"""
from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import vmae2_kernels as K
from vmae2_kernels import dispatch, ops
from vmae2_kernels import reference as R
from vmae2_kernels.roofline import SHAPES as ROOFLINE_SHAPES
from vmae2_kernels.roofline import Shape

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tolerances import assert_close_fp  # noqa: E402  (tests/tolerances.py: the shared tolerance table)

# -- configuration ------------------------------------------------------------------------------------------

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE.type == "cuda"
FULL = ON_CUDA or os.environ.get("VMAE2_BENCH_FULL") == "1"
BATCH = int(os.environ.get("VMAE2_BENCH_BATCH", "32" if FULL else "2"))
DTYPE = torch.bfloat16 if ON_CUDA else torch.float32  # activations (x, x_vis, pred); pos/mask token/video fp32
MEAN, STD = list(K.IMAGENET_DEFAULT_MEAN), list(K.IMAGENET_DEFAULT_STD)
TUBELET, FRAMES, IMAGE = 2, 16, 224
ENC_RATIO, DEC_RATIO = 0.9, 0.5
CUDA_INNER, CUDA_ROUNDS, CUDA_WARMUP = 50, 20, 2

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

OPS = ["token_gather", "token_scatter", "decoder_input", "running_cell_ids", "tube_ids", "recon_loss"]
PROVIDERS = ["torch", "compiled", "triton", "cuda", "cpp"]


def esize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def sync() -> None:
    if ON_CUDA:
        torch.cuda.synchronize()


# -- inputs (seeded, built once per test, outside the timed region) -----------------------------------------

def mask_ids(shape: Shape, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder-visible ids ``[B, Nv]`` (tube) and decoder-visible ids ``[B, Nd]`` (running cell), on DEVICE."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(BATCH, shape.hw, generator=g)
    phase = torch.randint(0, 4, (BATCH,), generator=g)
    vis = R.tube_ids(keys, shape.grid[0], shape.masked_per_frame)
    dec = R.running_cell_ids(phase, shape.grid, shape.masked_per_cell)
    return vis.to(DEVICE), dec.to(DEVICE)


def randn(*size, dtype=torch.float32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*size, generator=g).to(device=DEVICE, dtype=dtype)


@functools.lru_cache(maxsize=None)
def make_video(shape: Shape) -> torch.Tensor:
    """A normalised-looking clip batch ``[B, 3, 16, 224, 224]`` fp32 (cached: it is the largest input)."""
    return randn(BATCH, 3, FRAMES, IMAGE, IMAGE, seed=3)


@dataclass
class Case:
    """One op at one shape: how each provider calls it, and the bytes it must move."""
    public: object  # backend -> zero-argument callable (the public op, or the ops layer for the mask ops)
    reference: object  # reference fn (compiled or not) -> zero-argument callable
    nbytes: int


def build_case(op: str, shape: Shape) -> Case:
    B, N, Nv, Nd = BATCH, shape.num_tokens, shape.num_visible, shape.num_dec
    vis_ids, dec_ids = mask_ids(shape)
    ids_b = esize(torch.int64)
    if op == "token_gather":  # encoder: visible tokens of the patch embedding, plus the position table
        C = shape.dim
        x, pos = randn(B, N, C, dtype=DTYPE, seed=1), randn(N, C, seed=2)
        nbytes = B * Nv * C * esize(DTYPE) + B * Nv * ids_b + B * Nv * C * esize(pos.dtype) + B * Nv * C * esize(DTYPE)
        return Case(lambda b: (lambda: K.token_gather(x, vis_ids, pos, backend=b)),
                    lambda f: (lambda: f(x, vis_ids, pos)), nbytes)
    if op == "token_scatter":  # the adjoint (backward of the gather): [B, Nv, C] -> [B, N, C], zeros elsewhere
        C = shape.dim
        src = randn(B, Nv, C, dtype=DTYPE, seed=1)
        nbytes = B * Nv * C * esize(DTYPE) + B * Nv * ids_b + B * N * C * esize(DTYPE)  # the zeros are written too
        return Case(lambda b: (lambda: K.token_scatter(src, vis_ids, N, backend=b)),
                    lambda f: (lambda: f(src, vis_ids, N)), nbytes)
    if op == "decoder_input":  # [x_vis + pos[vis_ids] | mask_token + pos[dec_ids]]
        D = shape.dec_dim
        x_vis, pos = randn(B, Nv, D, dtype=DTYPE, seed=1), randn(N, D, seed=2)
        token = randn(1, 1, D, seed=4) * 0.02  # fp32 parameter, as in the model: the output is fp32
        out_dtype = torch.promote_types(DTYPE, token.dtype)
        L = Nv + Nd
        nbytes = (B * Nv * D * esize(DTYPE) + B * L * ids_b + B * L * D * esize(pos.dtype) + D * esize(token.dtype)
                  + B * L * D * esize(out_dtype))
        return Case(lambda b: (lambda: K.decoder_input(x_vis, vis_ids, dec_ids, token, pos, backend=b)),
                    lambda f: (lambda: f(x_vis, vis_ids, dec_ids, token, pos)), nbytes)
    if op == "running_cell_ids":  # ops layer: the phase is drawn outside the timed region
        t, h, w = shape.grid
        m = shape.masked_per_cell
        phase = torch.randint(0, 4, (B,), generator=torch.Generator().manual_seed(5)).to(DEVICE)
        nbytes = B * ids_b + B * Nd * ids_b
        return Case(lambda b: (lambda: ops.running_cell_ids(phase, t, h, w, m, b)),
                    lambda f: (lambda: f(phase, shape.grid, m)), nbytes)
    if op == "tube_ids":  # ops layer: the random keys are drawn outside the timed region
        keys = torch.rand(B, shape.hw, generator=torch.Generator().manual_seed(6)).to(DEVICE)
        t, m = shape.grid[0], shape.masked_per_frame
        nbytes = B * shape.hw * esize(keys.dtype) + B * Nv * ids_b
        return Case(lambda b: (lambda: ops.tube_ids(keys, t, m, b)), lambda f: (lambda: f(keys, t, m)), nbytes)
    if op == "recon_loss":  # forward only, float weights (one per decoder-visible token)
        P = shape.pred_dim
        pred, video = randn(B, Nd, P, dtype=DTYPE, seed=1), make_video(shape)
        weights = (torch.rand(B, Nd, generator=torch.Generator().manual_seed(7)) < ENC_RATIO).float().to(DEVICE)
        nbytes = recon_fwd_bytes(shape, pred.dtype, video.dtype)
        return Case(lambda b: (lambda: K.recon_loss(pred, video, dec_ids, weights, patch_size=shape.patch,
                                                    tubelet_size=TUBELET, backend=b)),
                    lambda f: (lambda: f(pred, video, dec_ids, weights, shape.patch, TUBELET, True, MEAN, STD)),
                    nbytes)
    raise ValueError(op)


def recon_fwd_bytes(shape: Shape, pred_dtype, video_dtype) -> int:
    """Reads pred, the Nd patches of the video (P values each), ids and fp32 weights; writes B*Nd fp32 partials."""
    B, Nd, P = BATCH, shape.num_dec, shape.pred_dim
    return (B * Nd * P * esize(pred_dtype) + B * Nd * P * esize(video_dtype) + B * Nd * esize(torch.int64)
            + B * Nd * 4 + B * Nd * 4)


def recon_fwd_bwd_bytes(shape: Shape, pred_dtype, video_dtype) -> int:
    """Forward, then a backward that reads the same inputs again and writes the gradient w.r.t. pred."""
    B, Nd, P = BATCH, shape.num_dec, shape.pred_dim
    bwd = (B * Nd * P * esize(pred_dtype) + B * Nd * P * esize(video_dtype) + B * Nd * esize(torch.int64)
           + B * Nd * 4 + B * Nd * P * esize(pred_dtype))
    return recon_fwd_bytes(shape, pred_dtype, video_dtype) + bwd


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
        case = build_case(op, shape)
        fn = case.reference(compiled)
    else:
        if provider != "torch":
            skip_unless_backend(provider, op)
        case = build_case(op, shape)
        fn = case.public(provider)
    if provider != "torch":
        check_close(fn(), case.public("torch")())
    timed(benchmark, bench_rows, fn, op=op, provider=provider, shape=shape, nbytes=case.nbytes)


# -- 2. mask construction: public API vs the official per-sample numpy generators ---------------------------

class TubeMaskNumpy:
    """Official-style encoder mask: one shuffled per-frame 0/1 vector (1 = masked), the same for every frame."""

    def __init__(self, grid, ratio):
        self.frames, self.hw = grid[0], grid[1] * grid[2]
        self.masked = int(ratio * self.hw)

    def __call__(self) -> np.ndarray:
        frame = np.concatenate([np.zeros(self.hw - self.masked), np.ones(self.masked)])
        np.random.shuffle(frame)
        return np.tile(frame, (self.frames, 1))  # (T', H'W') float64


class RunningCellMaskNumpy:
    """Official-style decoder mask: four maps precomputed once, one picked per sample (1 = decoder-masked).

    Map ``p``, frame ``t``: a 2x2 cell whose slots ``j`` (row-major) are masked iff ``(j + p + t + 1) % 4 < m``
    (the cell's pointer starts at ``p`` and advances once before each frame), tiled over the frame.
    """

    def __init__(self, grid, ratio):
        frames, h, w = grid
        m = int(4 * ratio)
        slots = np.arange(4)
        maps = []
        for start in range(4):
            rows = []
            for t in range(frames):
                cell = ((slots + start + t + 1) % 4 < m).astype(np.float64).reshape(2, 2)
                rows.append(np.tile(cell, (h // 2, w // 2)).reshape(-1))
            maps.append(np.stack(rows))
        self.maps = np.stack(maps)  # (4, T', H'W') float64

    def __call__(self) -> np.ndarray:
        return self.maps[np.random.randint(4)].copy()


def official_batch(generator, batch: int) -> torch.Tensor:
    """Per-sample generator calls, default_collate (tensor per sample, stacked), then the engine's conversion."""
    masks = torch.stack([torch.as_tensor(generator()) for _ in range(batch)])
    return masks.to(DEVICE, non_blocking=True).flatten(1).to(torch.bool)


def check_numpy_generators(shape: Shape) -> None:
    """The numpy re-statements build the masks whose kept ids our ops return (not timed)."""
    t, m = shape.grid[0], shape.masked_per_frame
    rc = RunningCellMaskNumpy(shape.grid, DEC_RATIO)
    for p in range(4):
        ours = ops.running_cell_ids(torch.tensor([p]), *shape.grid, shape.masked_per_cell, "torch")[0]
        assert torch.equal(ours, torch.nonzero(torch.as_tensor(rc.maps[p]).flatten() == 0).flatten())
    frame = TubeMaskNumpy(shape.grid, ENC_RATIO)()[0]
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
            gen = TubeMaskNumpy(shape.grid, ENC_RATIO)
        else:
            gen = RunningCellMaskNumpy(shape.grid, DEC_RATIO)
        fn = lambda: official_batch(gen, BATCH)  # noqa: E731
        nbytes = BATCH * shape.num_tokens * esize(torch.bool)  # the bool mask it produces on the device
    else:
        if provider != "torch":
            skip_unless_backend(provider, "tube_ids" if kind == "tube" else "running_cell_ids")
        torch.manual_seed(0)
        if kind == "tube":
            fn = lambda: K.tube_ids(BATCH, shape.grid, ENC_RATIO, device=DEVICE, backend=provider)  # noqa: E731
            nbytes = BATCH * shape.hw * 4 + BATCH * shape.num_visible * esize(torch.int64)
        else:
            fn = lambda: K.running_cell_ids(BATCH, shape.grid, DEC_RATIO, device=DEVICE, backend=provider)  # noqa
            nbytes = BATCH * esize(torch.int64) + BATCH * shape.num_dec * esize(torch.int64)
    timed(benchmark, bench_rows, fn, op=op, provider=provider, shape=shape, nbytes=nbytes)


# -- 3. fused loss forward + backward vs the official-style eager loss --------------------------------------

def official_style_loss(pred, video, enc_mask, dec_mask, patch):
    """Official-style loss: fp32 targets for all N tokens, boolean selection, weighted MSE (True = masked)."""
    B, C, T, H, W = video.shape
    with torch.no_grad():
        mean = torch.as_tensor(MEAN).to(video.device)[None, :, None, None, None]
        std = torch.as_tensor(STD).to(video.device)[None, :, None, None, None]
        u = video * std + mean
        t, h, w = T // TUBELET, H // patch, W // patch
        patches = u.reshape(B, C, t, TUBELET, h, patch, w, patch).permute(0, 2, 4, 6, 3, 5, 7, 1)
        patches = patches.reshape(B, t * h * w, TUBELET * patch * patch, C)
        patches = (patches - patches.mean(dim=-2, keepdim=True)) / (
            patches.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
        target = patches.reshape(B, t * h * w, -1)
        labels = target[~dec_mask].reshape(B, -1, target.shape[-1])
    loss = ((pred - labels) ** 2).mean(dim=-1)
    weights = enc_mask[~dec_mask].reshape(B, -1)
    return (loss * weights).sum() / weights.sum()


def fused_with_mask(pred, video, dec_ids, enc_mask, patch):
    """What ``recon_loss(..., enc_mask)`` does in eager, for the compiled provider: weights gathered, then the loss."""
    weights = torch.gather(enc_mask, 1, dec_ids).float()
    return R.recon_loss(pred, video, dec_ids, weights, patch, TUBELET, True, MEAN, STD)


def cpu_peak_extra_bytes(fn) -> int:
    """Peak CPU memory one call of ``fn`` allocates above what was allocated before it (its inputs), in bytes.

    Walks ``torch.profiler``'s memory events (``profile_memory=True``: one event per allocation and free of the
    c10 CPU allocator, signed sizes) in time order and takes the maximum of the running total. Every tensor counts,
    those allocated inside C++ ops (the native extension's outputs) and by autograd included; scratch that bypasses
    the allocator (the native loss's per-thread ``std::vector`` of one token's target, a few KB) does not.
    ``tests/test_peak_memory.py`` checks it on known allocation patterns.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    total = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        total += e.nbytes()
        peak = max(peak, total)
    return peak


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
    vis_ids, dec_ids = mask_ids(shape)
    enc_mask = torch.ones(BATCH, N, dtype=torch.bool, device=DEVICE).scatter_(1, vis_ids, False)
    dec_mask = torch.ones(BATCH, N, dtype=torch.bool, device=DEVICE).scatter_(1, dec_ids, False)
    pred = randn(BATCH, shape.num_dec, shape.pred_dim, dtype=DTYPE, seed=1).requires_grad_(True)
    video = make_video(shape)

    def loss_of(name):
        if name == "official":
            return lambda: official_style_loss(pred, video, enc_mask, dec_mask, p)
        if name == "compiled":
            return lambda: compiled(pred, video, dec_ids, enc_mask, p)
        return lambda: K.recon_loss(pred, video, dec_ids, enc_mask, patch_size=p, tubelet_size=TUBELET, backend=name)

    loss = loss_of(provider)
    fn = lambda: torch.autograd.grad(loss(), pred)[0]  # noqa: E731  (no .grad accumulation in the timed call)
    if provider != "official":  # same loss and gradient as the official-style one
        check_close(loss(), loss_of("official")())
        check_close(fn(), torch.autograd.grad(loss_of("official")(), pred)[0])
    nbytes = recon_fwd_bwd_bytes(shape, DTYPE, video.dtype)
    peak, meter = peak_extra_bytes(fn)  # one untimed call; the gradient it returns (B*Nd*P values) is included
    timed(benchmark, bench_rows, fn, op="recon_loss_fwd_bwd", provider=provider, shape=shape, nbytes=nbytes,
          peak_extra_mem_mib=peak / 2 ** 20, peak_extra_mem_bytes=peak, peak_mem_meter=meter,
          grad_mib=pred.numel() * pred.element_size() / 2 ** 20)
