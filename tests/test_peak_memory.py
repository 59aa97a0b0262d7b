"""The CPU peak-memory meter of the loss benchmark, and the fused native loss's memory saving it measures.

The meter (``benchmarks/memory.py::cpu_peak_extra_bytes``) walks torch.profiler's allocator events; here it must
give exact peaks on known allocation patterns (frees included, allocations made inside C++ ops and by autograd
seen). Then, at the ViT-B geometry (16x224 clip, patch 16, tube 0.9 / running cell 0.5) with one clip, the native
fused loss forward + backward must allocate at least 4x less than the official eager loss (``oracle``).
"""
import oracle as O
import pytest
import torch
from oracle.tolerances import assert_close_fp

import vmae2_kernels as K
from benchmarks.memory import cpu_peak_extra_bytes as meter
from benchmarks.gpu.roofline import SHAPES
from vmae2_kernels import dispatch
from vmae2_kernels import reference as R

MIB = 2 ** 20


def test_meter_follows_allocations_and_frees():
    def pattern():
        a = torch.empty(10 * MIB, dtype=torch.uint8)
        b = torch.empty(20 * MIB, dtype=torch.uint8)  # 30 MiB live: the peak
        del a
        c = torch.empty(5 * MIB, dtype=torch.uint8)  # 25 MiB live
        return b, c

    assert meter(pattern) == 30 * MIB
    assert meter(lambda: None) == 0


def test_meter_sees_allocations_inside_ops_and_autograd():
    x = torch.randn(1024, 256, requires_grad=True)  # 1 MiB input: not counted
    assert meter(lambda: torch.cat([x.detach(), x.detach()])) == 2 * MIB  # the op's output, allocated in C++
    # forward: the 1 MiB product, freed after the sum (a scalar multiply saves nothing for backward); backward:
    # the 1 MiB gradient; never both at once. Plus a few scalars (the loss, its gradient).
    peak = meter(lambda: torch.autograd.grad((x * 2).sum(), x)[0])
    assert MIB <= peak <= MIB + 1024

@pytest.mark.skipif(bool(dispatch.not_supported_reasons("cpp", "recon_loss", "cpu")),
                    reason="; ".join(dispatch.not_supported_reasons("cpp", "recon_loss", "cpu")))
def test_meter_sees_native_extension_allocations():
    x, ids = torch.randn(2, 300, 64), torch.arange(0, 300, 3).expand(2, -1).contiguous()
    assert meter(lambda: K.token_gather(x, ids, backend="cpp")) == 2 * 100 * 64 * 4


@pytest.mark.skipif(bool(dispatch.not_supported_reasons("cpp", "recon_loss", "cpu")),
                    reason="; ".join(dispatch.not_supported_reasons("cpp", "recon_loss", "cpu")))
def test_native_loss_needs_at_least_4x_less_peak_memory_than_the_official_loss():
    shape = SHAPES["ViT-B"]  # N = 1568, Nd = 784, P = 1536
    B, N, p = 1, shape.num_tokens, shape.patch
    g = torch.Generator().manual_seed(0)
    vis = R.tube_ids(torch.rand(B, shape.hw, generator=g), shape.grid[0], shape.masked_per_frame)
    dec = R.running_cell_ids(torch.randint(0, 4, (B,), generator=g), shape.grid, shape.masked_per_cell)
    enc_mask = torch.ones(B, N, dtype=torch.bool).scatter_(1, vis, False)
    dec_mask = torch.ones(B, N, dtype=torch.bool).scatter_(1, dec, False)
    pred = torch.randn(B, shape.num_dec, shape.pred_dim, generator=g).requires_grad_(True)
    video = torch.randn(B, 3, shape.frames, shape.image, shape.image, generator=g)

    def official():
        return torch.autograd.grad(O.official_loss(pred, video, enc_mask, dec_mask, p), pred)[0]

    def native():
        loss = K.recon_loss(pred, video, dec, enc_mask, patch_size=p, target="videomae", mean=K.IMAGENET_DEFAULT_MEAN,
                            std=K.IMAGENET_DEFAULT_STD, backend="cpp")
        return torch.autograd.grad(loss, pred)[0]

    assert_close_fp(native(), official())  # the same gradient (fused vs eager: other reduction order)
    peak_official, peak_native = meter(official), meter(native)
    grad_bytes = pred.numel() * 4
    assert grad_bytes <= peak_native <= 1.1 * grad_bytes  # essentially only the gradient it returns
    assert peak_official >= 4 * peak_native, (peak_official / MIB, peak_native / MIB)
