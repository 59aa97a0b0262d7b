"""The masked patch embedding (issue 16): ``tubelet_gather`` on every backend bit-exact with the reference (pure data
movement) and its adjoint; ``patch_embed`` against the Conv3d + ``token_gather`` it replaces, forward and backward,
in fp32 and under bf16 autocast; ``torch.compile(fullgraph=True)``; refusals. Triton runs under the interpreter."""
import pytest
import torch
import torch.nn.functional as F
from tolerances import assert_close_fp

import vmae2_kernels as K
from vmae2_kernels import dispatch, ops
from vmae2_kernels import reference as R

BACKENDS = ["torch"] + [b for b in ("cpp", "triton")
                        if not dispatch.not_supported_reasons(b, "tubelet_gather", "cpu", torch.float32)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CASES = [  # (B, T, H, W, patch, tubelet, K)
    (2, 4, 32, 48, 16, 2, 3),  # H != W
    (3, 2, 48, 32, 16, 2, 1),  # T' = 1, K = 1
    (2, 4, 28, 42, 14, 2, 12),  # patch 14 (ViT-g), K = N
    (1, 3, 16, 32, 16, 1, 4),  # tubelet 1
]
LAYOUTS = ["contiguous", "slice", "channels_last_3d"]  # slice: strided, unit W stride; channels_last_3d: W stride 3


@pytest.fixture(autouse=True)
def _fresh_dispatch():
    dispatch.reset()
    yield
    dispatch.reset()


def _ids(B, N, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(N, generator=g)[:K].sort().values for _ in range(B)])


def _video(B, T, H, W, dtype=torch.float32, layout="contiguous", seed=0):
    g = torch.Generator().manual_seed(seed)
    if layout == "slice":  # a window of a larger clip: every stride but W's differs from the contiguous ones
        return torch.randn(B, 3, T + 1, H + 2, W + 16, generator=g).to(dtype)[:, :, 1:, 2:, 8:W + 8]
    video = torch.randn(B, 3, T, H, W, generator=g).to(dtype)
    return video.to(memory_format=torch.channels_last_3d) if layout == "channels_last_3d" else video


def _tokens(T, H, W, patch, tubelet):
    return (T // tubelet) * (H // patch) * (W // patch)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,H,W,p,t,Kk", CASES)
def test_tubelet_gather_is_the_reference_bit_for_bit(B, T, H, W, p, t, Kk, dtype, layout, backend):
    video = _video(B, T, H, W, dtype, layout)
    ids = _ids(B, _tokens(T, H, W, p, t), Kk)
    out = K.tubelet_gather(video, ids, p, t, backend=backend)
    assert out.dtype == dtype and out.shape == (B, Kk, 3 * t * p * p)
    assert torch.equal(out, R.tubelet_gather(video, ids, p, t))  # pure data movement


def test_reference_rows_are_the_conv3d_weight_order():
    """Row k holds tubelet ids[k] in the (c, p0, p1, p2) order of ``weight.flatten(1)``: the Conv3d of one tubelet
    is its row times the flattened weight (fp64: the same sums, exactly enough)."""
    video = _video(2, 4, 32, 48, torch.float64)
    weight = torch.randn(5, 3, 2, 16, 16, dtype=torch.float64)
    ids = _ids(2, 12, 4)
    conv = F.conv3d(video, weight, stride=(2, 16, 16)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(R.tubelet_gather(video, ids, 16, 2) @ weight.flatten(1).T,
                               torch.gather(conv, 1, ids[:, :, None].expand(-1, -1, 5)))
    b, k = 1, 2  # and one element by hand: token (t, h, w) = divmod chains of the id
    n = int(ids[b, k])
    tt, hh, ww = n // 6, n // 3 % 2, n % 3
    c, p0, p1, p2 = 2, 1, 5, 9
    assert R.tubelet_gather(video, ids, 16, 2)[b, k, ((c * 2 + p0) * 16 + p1) * 16 + p2] == \
        video[b, c, 2 * tt + p0, 16 * hh + p1, 16 * ww + p2]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,T,H,W,p,t,Kk", CASES)
def test_tubelet_gather_gradient_is_the_adjoint(B, T, H, W, p, t, Kk, dtype, backend):
    video = _video(B, T, H, W, dtype, "slice").requires_grad_()
    ids = _ids(B, _tokens(T, H, W, p, t), Kk, seed=1)
    grad = torch.randn(B, Kk, 3 * t * p * p).to(dtype)
    (got,) = torch.autograd.grad(K.tubelet_gather(video, ids, p, t, backend=backend), video, grad)
    (want,) = torch.autograd.grad(R.tubelet_gather(video, ids, p, t), video, grad)
    assert got.dtype == dtype and torch.equal(got, want)  # unique ids: each row written once into zeros


def test_gradcheck_reference_fp64():
    video = torch.randn(2, 3, 4, 8, 12, dtype=torch.float64, requires_grad=True)
    ids = _ids(2, 12, 5)
    assert torch.autograd.gradcheck(lambda v: ops.tubelet_gather(v, ids, 4, 2, "torch"), (video,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    for video in (_video(2, 4, 32, 32), _video(2, 4, 32, 32, layout="slice")):  # the fake's strides: contiguous
        torch.library.opcheck(ops.tubelet_gather, (video.requires_grad_(), _ids(2, 8, 3), 16, 2, backend))


# -- patch_embed ----------------------------------------------------------------------------------------------

def _conv_path(video, ids, weight, bias, pos):
    """What the model computes today: PatchEmbed's Conv3d over every tubelet, then token_gather with the table."""
    t, p = weight.shape[2], weight.shape[3]
    x = F.conv3d(video, weight, bias, stride=(t, p, p)).flatten(2).transpose(1, 2)
    return K.token_gather(x, ids, pos, backend="torch")


def _embed_inputs(B, T, H, W, p, t, Kk, C=24, learnable_pos=False):
    g = torch.Generator().manual_seed(2)
    video = _video(B, T, H, W, layout="slice").requires_grad_()
    weight = (0.02 * torch.randn(C, 3, t, p, p, generator=g)).requires_grad_()
    bias = torch.randn(C, generator=g).requires_grad_()
    N = _tokens(T, H, W, p, t)
    pos = torch.randn(N, C, generator=g).requires_grad_(learnable_pos)
    return video, _ids(B, N, Kk, seed=3), weight, bias, pos


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_pos", [True, False])
@pytest.mark.parametrize("B,T,H,W,p,t,Kk", CASES)
def test_patch_embed_is_the_conv3d_at_ids(B, T, H, W, p, t, Kk, with_pos, backend):
    video, ids, weight, bias, pos = _embed_inputs(B, T, H, W, p, t, Kk, learnable_pos=with_pos)
    pos = pos if with_pos else None
    out = K.patch_embed(video, ids, weight, bias, pos, backend=backend)
    ref = _conv_path(video, ids, weight, bias, pos)
    assert out.shape == ref.shape == (B, Kk, weight.shape[0]) and out.dtype == ref.dtype == torch.float32
    assert_close_fp(out, ref)  # one GEMM vs the convolution: fp32 sums in another order
    grad = torch.randn_like(ref)
    inputs = (video, weight, bias) + ((pos,) if with_pos else ())
    for got, want in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(ref, inputs, grad)):
        assert_close_fp(got, want)


def test_patch_embed_under_bf16_autocast_follows_the_model():
    """Autocast runs the GEMM in bf16 as it runs the Conv3d, and the fp32 table is added in bf16, as token_gather
    adds it: a bf16 result."""
    video, ids, weight, bias, pos = _embed_inputs(2, 4, 32, 48, 16, 2, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = K.patch_embed(video, ids, weight, bias, pos)
        ref = _conv_path(video, ids, weight, bias, pos)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert_close_fp(out, ref, growth=2)  # two bf16 roundings each (GEMM output, the table's add)
    grad = torch.randn(ref.shape).to(torch.bfloat16)
    got = torch.autograd.grad(out, (video, weight, bias), grad)
    want = torch.autograd.grad(ref, (video, weight, bias), grad)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == torch.float32  # gradients of the fp32 leaves
        assert_close_fp(a, b, torch.bfloat16, growth=2)


def test_patch_embed_compiles_forward_and_backward_in_one_graph():
    from torch._dynamo.testing import CompileCounterWithBackend

    video, ids, weight, bias, pos = _embed_inputs(2, 4, 32, 48, 16, 2, 5)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda *a: K.patch_embed(*a).square().mean(), backend=counter, fullgraph=True)
    loss = compiled(video, ids, weight, bias, pos)
    grads = torch.autograd.grad(loss, (video, weight, bias))
    eager = K.patch_embed(video, ids, weight, bias, pos).square().mean()
    assert counter.frame_count == 1  # fullgraph: no graph break
    assert_close_fp(loss, eager)
    for got, want in zip(grads, torch.autograd.grad(eager, (video, weight, bias))):
        assert_close_fp(got, want)
