"""Every fused kernel against its plain-torch reference on every device: on CPU tensors Triton (by the interpreter)
and the native C++ ops, on CUDA tensors (where torch sees a GPU) Triton and the native CUDA ops; plus the op layer:
registration (opcheck), autograd, gradcheck, dispatch reasons and torch.compile without graph breaks."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from oracle.tolerances import assert_close_fp

import vmae2_kernels as K
from vmae2_kernels import dispatch, ops
from vmae2_kernels import reference as R

triton_ops = pytest.importorskip("vmae2_kernels.triton_ops", reason="triton is not installed")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


FUSED = {"cpu": ("triton", "cpp"), "cuda": ("triton", "cuda")}  # the fused backends that run each device's tensors


def _runs(name, device="cpu"):
    reasons = dispatch.not_supported_reasons(name, "token_gather", device)
    return pytest.mark.skipif(bool(reasons), reason=f"{name} backend on {device}: {'; '.join(reasons)}")


def kernel_cases(with_torch=False):
    """``(device, backend)`` params: each device's fused backends (and ``torch``), cpu always; cuda skipped with the
    reason where torch sees no GPU, so on a GPU machine Triton runs on CUDA tensors (the interpreter only on CPU)."""
    cases = []
    for device, fused in FUSED.items():
        for name in ("torch",) * with_torch + fused:
            if device == "cuda" and not torch.cuda.is_available():
                mark = pytest.mark.skip(reason="no CUDA device (torch.cuda.is_available() is False)")
            else:
                mark = _runs(name, device)
            cases.append(pytest.param((device, name), marks=mark, id=f"{name}-{device}"))
    return cases


@pytest.fixture(params=kernel_cases())
def case(request):
    return request.param


@pytest.fixture
def device(case):
    """The device the inputs are made on."""
    return case[0]


@pytest.fixture
def backend(case):
    """The fused backend checked against the reference on ``device``'s tensors."""
    return case[1]


@pytest.fixture(autouse=True)
def _exact_fp32():
    """TF32 off for cuDNN convolutions and CUDA matmuls (cuDNN's default is on): fp32 references stay fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(autouse=True)
def _fresh_dispatch():
    dispatch.reset()
    yield
    dispatch.reset()


def test_kernel_cases_include_cuda_where_torch_sees_a_gpu(monkeypatch):
    """With a GPU, each device's fused backends are cases, none skipped for want of a device: Triton runs on CUDA
    tensors there, skipped only for a reason of its own (e.g. triton not installed)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cases = {param.values[0]: param.marks for param in kernel_cases(with_torch=True)}
    assert list(cases) == [("cpu", "torch"), ("cpu", "triton"), ("cpu", "cpp"),
                           ("cuda", "torch"), ("cuda", "triton"), ("cuda", "cuda")]
    for (device, name), marks in cases.items():
        (mark,) = marks
        assert mark.name == "skipif" and mark.args == (bool(dispatch.not_supported_reasons(name, "token_gather",
                                                                                            device)),)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for param in kernel_cases():
        if param.values[0][0] == "cuda":
            assert [m.kwargs["reason"] for m in param.marks] == ["no CUDA device (torch.cuda.is_available() is False)"]


def test_every_fused_test_is_collected_for_cuda(tmp_path):
    """Collected with torch seeing a GPU, every test of a fused backend on CPU tensors also has its Triton and CUDA
    cases on CUDA tensors."""
    (tmp_path / "fake_gpu.py").write_text("import torch\ntorch.cuda.is_available = lambda: True\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(tmp_path), os.environ.get("PYTHONPATH")))))
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "fake_gpu",
                          str(Path(__file__).resolve())], capture_output=True, text=True, cwd=root, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ids = [line for line in out.stdout.splitlines() if "::" in line]

    def tests_with(case):
        return {i.split("::")[1].split("[")[0] for i in ids if f"[{case}-" in i or f"-{case}-" in i or
                i.endswith(f"-{case}]") or i.endswith(f"[{case}]")}

    fused_on_cpu = tests_with("triton-cpu") | tests_with("cpp-cpu")
    assert len(fused_on_cpu) >= 14, fused_on_cpu
    assert tests_with("triton-cuda") == tests_with("cuda-cuda") == fused_on_cpu


def _ids(B, N, K, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(N, generator=g)[:K].sort().values for _ in range(B)]).to(device)


def _one_rounding(out, ref, exact, pos, dtype):
    """fp32: bit-equal to the reference (one IEEE add of the same operands is correctly rounded, so every
    implementation gives the same bits). Low precision: within one rounding of ``pos`` (cast to ``dtype`` first, as
    the reference does) plus one rounding of the sum: |out - exact| <= eps * (|pos| + |exact|). (The interpreter
    truncates casts where a GPU rounds to nearest, so bit equality is a GPU-only property.)"""
    if dtype == torch.float32:
        assert torch.equal(out, ref)
    else:
        err = (out.double() - exact).abs()
        assert (err <= torch.finfo(dtype).eps * (pos.abs() + exact.abs()) + 1e-30).all(), err.max()


# -- gather / scatter -----------------------------------------------------------------------------------

GATHER_SHAPES = [(1, 5, 1, 3), (3, 37, 1000, 13), (2, 50, 1536, 7), (3, 196, 24, 99)]


@pytest.mark.parametrize("B,N,C,Kk", GATHER_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_token_gather_forward(B, N, C, Kk, dtype, device, backend):
    x = torch.randn(B, N, C).to(device, dtype)
    ids, pos = _ids(B, N, Kk, device=device), torch.randn(N, C).to(device)
    assert torch.equal(K.token_gather(x, ids, backend=backend), R.token_gather(x, ids))  # pure data movement
    exact = R.token_gather(x.double(), ids, pos.double())
    _one_rounding(K.token_gather(x, ids, pos, backend=backend), R.token_gather(x, ids, pos), exact,
                  pos.double()[ids], dtype)


@pytest.mark.parametrize("B,N,C,Kk", GATHER_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_token_gather_backward_and_scatter(B, N, C, Kk, dtype, device, backend):
    ids = _ids(B, N, Kk, seed=1, device=device)
    x = torch.randn(B, N, C).to(device, dtype).requires_grad_()
    grad = torch.randn(B, Kk, C).to(device, dtype)
    (gx,) = torch.autograd.grad(K.token_gather(x, ids, backend=backend), x, grad)
    (gr,) = torch.autograd.grad(R.token_gather(x, ids), x, grad)
    assert torch.equal(gx, gr)  # unique ids: the backward scatters each gradient row once, pure data movement
    src = torch.randn(B, Kk, C).to(device, dtype).requires_grad_()
    out = K.token_scatter(src, ids, N, backend=backend)
    assert torch.equal(out, R.token_scatter(src, ids, N))  # pure data movement
    up = torch.randn(B, N, C).to(device, dtype)
    (gs,) = torch.autograd.grad(out, src, up)
    (gs_ref,) = torch.autograd.grad(K.token_scatter(src, ids, N, backend="torch"), src, up)
    # the backward gathers the upstream rows at ids: pure data movement, bit-equal in every dtype
    assert torch.equal(gs, gs_ref) and torch.equal(gs, up[torch.arange(B, device=device)[:, None], ids])


def test_learnable_pos_gradient(device, backend):
    x = torch.randn(2, 9, 5).to(device).requires_grad_()
    pos = torch.randn(9, 5).to(device).requires_grad_()
    ids = _ids(2, 9, 4, device=device)
    grad = torch.randn(2, 4, 5).to(device)
    got = torch.autograd.grad(K.token_gather(x, ids, pos, backend=backend), (x, pos), grad)
    want = torch.autograd.grad(R.token_gather(x, ids, pos), (x, pos), grad)
    for a, b in zip(got, want):
        assert_close_fp(a, b)  # the pos gradient sums over the batch: reduction order may differ


# -- tubelet gather, masked patch embedding -------------------------------------------------------------

TUBELET_CASES = [  # (B, T, H, W, patch, tubelet, K)
    (2, 4, 32, 48, 16, 2, 3),  # H != W
    (3, 2, 48, 32, 16, 2, 1),  # T' = 1, K = 1
    (2, 4, 28, 42, 14, 2, 12),  # patch 14 (ViT-g), K = N
    (1, 3, 16, 32, 16, 1, 4),  # tubelet 1
]
LAYOUTS = ["contiguous", "slice", "channels_last_3d"]  # slice: strided, unit W stride; channels_last_3d: W stride 3


def _video(B, T, H, W, dtype=torch.float32, layout="contiguous", seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    if layout == "slice":  # a window of a larger clip: every stride but W's differs from the contiguous ones
        return torch.randn(B, 3, T + 1, H + 2, W + 16, generator=g).to(device, dtype)[:, :, 1:, 2:, 8:W + 8]
    video = torch.randn(B, 3, T, H, W, generator=g).to(device, dtype)
    return video.to(memory_format=torch.channels_last_3d) if layout == "channels_last_3d" else video


def _tokens(T, H, W, patch, tubelet):
    return (T // tubelet) * (H // patch) * (W // patch)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,H,W,p,t,Kk", TUBELET_CASES)
def test_tubelet_gather_forward(B, T, H, W, p, t, Kk, dtype, layout, device, backend):
    video = _video(B, T, H, W, dtype, layout, device=device)
    ids = _ids(B, _tokens(T, H, W, p, t), Kk, device=device)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,T,H,W,p,t,Kk", TUBELET_CASES)
def test_tubelet_gather_gradient_is_the_adjoint(B, T, H, W, p, t, Kk, dtype, device, backend):
    video = _video(B, T, H, W, dtype, "slice", device=device).requires_grad_()
    ids = _ids(B, _tokens(T, H, W, p, t), Kk, seed=1, device=device)
    grad = torch.randn(B, Kk, 3 * t * p * p).to(device, dtype)
    (got,) = torch.autograd.grad(K.tubelet_gather(video, ids, p, t, backend=backend), video, grad)
    (want,) = torch.autograd.grad(R.tubelet_gather(video, ids, p, t), video, grad)
    assert got.dtype == dtype and torch.equal(got, want)  # unique ids: each row written once into zeros


def _conv_path(video, ids, weight, bias, pos):
    """What the model computes today: PatchEmbed's Conv3d over every tubelet, then token_gather with the table."""
    t, p = weight.shape[2], weight.shape[3]
    x = F.conv3d(video, weight, bias, stride=(t, p, p)).flatten(2).transpose(1, 2)
    return K.token_gather(x, ids, pos, backend="torch")


def _embed_inputs(B, T, H, W, p, t, Kk, C=24, learnable_pos=False, device="cpu"):
    g = torch.Generator().manual_seed(2)
    video = _video(B, T, H, W, layout="slice", device=device).requires_grad_()
    weight = (0.02 * torch.randn(C, 3, t, p, p, generator=g)).to(device).requires_grad_()
    bias = torch.randn(C, generator=g).to(device).requires_grad_()
    N = _tokens(T, H, W, p, t)
    pos = torch.randn(N, C, generator=g).to(device).requires_grad_(learnable_pos)
    return video, _ids(B, N, Kk, seed=3, device=device), weight, bias, pos


@pytest.mark.parametrize("case", kernel_cases(with_torch=True))
@pytest.mark.parametrize("with_pos", [True, False])
@pytest.mark.parametrize("B,T,H,W,p,t,Kk", TUBELET_CASES)
def test_patch_embed_is_the_conv3d_at_ids(B, T, H, W, p, t, Kk, with_pos, device, backend):
    video, ids, weight, bias, pos = _embed_inputs(B, T, H, W, p, t, Kk, learnable_pos=with_pos, device=device)
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


# -- decoder input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("B,N,D,Nv,Nd", [(1, 8, 1, 2, 4), (3, 40, 100, 7, 20), (2, 24, 1536, 3, 12)])
@pytest.mark.parametrize("x_dtype,tok_dtype,pos_dtype", [
    (torch.float32,) * 3,
    (torch.bfloat16, torch.float32, torch.float32),  # the official decoder under autocast: an fp32 result
    (torch.float16, torch.float16, torch.float32),
    (torch.bfloat16,) * 3,
    (torch.float16,) * 3,
])
def test_decoder_input(B, N, D, Nv, Nd, x_dtype, tok_dtype, pos_dtype, device, backend):
    x = torch.randn(B, Nv, D).to(device, x_dtype).requires_grad_()
    tok = (0.02 * torch.randn(1, 1, D)).to(device, tok_dtype).requires_grad_()
    pos = torch.randn(N, D).to(device, pos_dtype)
    vis, dec = _ids(B, N, Nv, 2, device), _ids(B, N, Nd, 3, device)
    out = K.decoder_input(x, vis, dec, tok, pos, backend=backend)
    ref = R.decoder_input(x, vis, dec, tok, pos)
    expected_dtype = torch.promote_types(torch.promote_types(x_dtype, tok_dtype), pos_dtype)
    assert out.dtype == ref.dtype == expected_dtype and out.shape == (B, Nv + Nd, D)
    p = pos.double()
    exact = torch.cat([x.detach().double() + p[vis], tok.detach().double().reshape(1, 1, D) + p[dec]], 1)
    _one_rounding(out, ref, exact, torch.zeros_like(exact), expected_dtype)  # one rounding of the exact sum
    grad = torch.randn_like(ref)
    gx, gt = torch.autograd.grad(out, (x, tok), grad)
    rx, rt = torch.autograd.grad(ref, (x, tok), grad)
    assert torch.equal(gx, rx) and gx.dtype == x_dtype  # the x gradient is a gather of grad: data movement
    # the mask-token gradient sums B * Nd rows (fp32 accumulation, then rounded to tok_dtype)
    assert_close_fp(gt.float(), rt.float(), tok_dtype)


def test_mask_token_grad_kernel_many_rows(device, backend):
    g = torch.randn(3, 7 + 600, 33).to(device)
    got = ops.mask_token_grad(g, 7, backend)
    assert_close_fp(got, g[:, 7:].double().sum((0, 1)).float(), torch.float32)  # 1800-row fp32 sum vs fp64


# -- mask ids -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("grid", [(8, 14, 14), (8, 16, 16), (1, 2, 2), (3, 4, 6), (5, 2, 10)])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_running_cell_ids(grid, ratio, device, backend):
    phase = torch.tensor([0, 1, 2, 3, 2])
    got = K.running_cell_ids(5, grid, ratio, phase, device=device, backend=backend)
    assert got.device.type == device
    assert torch.equal(got, K.running_cell_ids(5, grid, ratio, phase, device=device, backend="torch"))


@pytest.mark.parametrize("grid,ratio", [((8, 14, 14), 0.9), ((8, 16, 16), 0.9), ((2, 3, 5), 0.5),
                                        ((1, 1, 7), 0.0), ((3, 14, 14), 0.95)])
def test_tube_ids(grid, ratio, device, backend):
    g = torch.Generator(device).manual_seed(4)
    got = K.tube_ids(3, grid, ratio, g, backend=backend)
    g = torch.Generator(device).manual_seed(4)
    assert got.device.type == device
    assert torch.equal(got, K.tube_ids(3, grid, ratio, g, backend="torch"))


def test_tube_ids_ties_break_by_index(device, backend):
    keys = torch.tensor([[0.5, 0.5, 0.1, 0.5, 0.9, 0.5]], device=device)
    got = ops.tube_ids(keys, 2, 3, backend)
    assert torch.equal(got, R.tube_ids(keys, 2, 3))
    assert got.tolist() == [[3, 4, 5, 9, 10, 11]]  # masked: 0.1 (2), then the first two 0.5s (0, 1)


# -- fused reconstruction loss --------------------------------------------------------------------------

LOSS_CASES = [  # (B, T, H, W, patch, Nd)
    (1, 2, 16, 16, 16, 1),
    (3, 4, 32, 48, 16, 5),
    (2, 4, 28, 42, 14, 6),  # P = 2*14*14 = 392: not a power of two
]


@pytest.mark.parametrize("B,T,H,W,p,Nd", LOSS_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", ["videomae", "mae", "raw"])
def test_recon_loss_forward_backward(B, T, H, W, p, Nd, dtype, target, device, backend):
    N = (T // 2) * (H // p) * (W // p)
    video = torch.randn(B, 3, T, H, W).to(device)
    dec = _ids(B, N, Nd, 5, device)
    enc_mask = (torch.rand(B, N) < 0.6).to(device)
    enc_mask[:, dec[:, 0]] = True  # at least one supervised token per sample
    pred = torch.randn(B, Nd, 2 * p * p * 3).to(device, dtype).requires_grad_()
    kw = dict(patch_size=p, target=target, mean=MEAN, std=STD)
    loss = K.recon_loss(pred, video, dec, enc_mask, backend=backend, **kw)
    ref = K.recon_loss(pred, video, dec, enc_mask, backend="torch", **kw)
    assert loss.dtype == ref.dtype == torch.float32
    assert_close_fp(loss, ref)  # fp32 accumulation whatever pred's dtype
    (g,) = torch.autograd.grad(loss, pred)
    (gr,) = torch.autograd.grad(ref, pred)
    assert g.dtype == dtype
    # Entries where pred ~ target cancel; the default scale measures errors against the gradient's scale.
    assert_close_fp(g.float(), gr.float(), dtype)


def test_recon_loss_weights_and_official_equivalence(device, backend):
    video = torch.randn(2, 3, 4, 32, 32).to(device)
    dec = _ids(2, 8, 4, 6, device)
    w = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]], device=device)
    pred = torch.randn(2, 4, 1536).to(device)
    kw = dict(patch_size=16, target="videomae", mean=MEAN, std=STD)
    loss = K.recon_loss(pred, video, dec, weights=w, backend=backend, **kw)
    target = R.recon_target(video, dec, 16, 2, 1, MEAN, STD)
    expected = ((pred - target).pow(2).mean(-1) * w).sum() / w.sum()
    assert_close_fp(loss, expected)
    with pytest.raises(ValueError, match="weights has shape"):
        K.recon_loss(pred, video, dec, weights=w[:, :3], **kw)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 4\); expected \[B, N\] = \[2, 8\].*weights="):
        K.recon_loss(pred, video, dec, w, **kw)  # [B, Nd] weights given where the [B, N] mask goes


@pytest.mark.slow
def test_vit_b_shapes(device, backend):
    """A real ViT-B geometry (8x14x14 tokens, D=768, decoder 384) through every kernel."""
    B = 2
    g = torch.Generator(device).manual_seed(0)
    vis = K.tube_ids(B, (8, 14, 14), 0.9, g, backend=backend)
    dec = K.running_cell_ids(B, (8, 14, 14), 0.5, generator=g, backend=backend)
    x = torch.randn(B, 1568, 768, device=device)
    pos = torch.randn(1568, 768, device=device)
    # fp32 gather + one add of the same operands (see _one_rounding): bit-exact
    assert torch.equal(K.token_gather(x, vis, pos, backend=backend), R.token_gather(x, vis, pos))
    x_vis, tok, dpos = (torch.randn(*shape, device=device) for shape in ((B, 160, 384), (384,), (1568, 384)))
    assert torch.equal(K.decoder_input(x_vis, vis, dec, tok, dpos, backend=backend),
                       R.decoder_input(x_vis, vis, dec, tok, dpos))
    video = torch.randn(B, 3, 16, 224, 224, device=device)
    enc_mask = torch.ones(B, 1568, dtype=torch.bool, device=device).scatter_(1, vis, False)
    pred = torch.randn(B, 784, 1536, device=device)
    kw = dict(patch_size=16, target="videomae", mean=MEAN, std=STD)
    assert_close_fp(K.recon_loss(pred, video, dec, enc_mask, backend=backend, **kw),
                    K.recon_loss(pred, video, dec, enc_mask, backend="torch", **kw))


# -- the op layer ---------------------------------------------------------------------------------------

def _opcheck_cases(device, backend):
    def leaf(*shape):
        return torch.randn(*shape, device=device, requires_grad=True)

    ids, pos = _ids(2, 9, 4, device=device), torch.randn(9, 6, device=device)
    video, dec = torch.randn(2, 3, 4, 32, 32, device=device), _ids(2, 8, 3, device=device)
    clip = _video(2, 4, 32, 32, device=device).requires_grad_()
    window = _video(2, 4, 32, 32, layout="slice", device=device).requires_grad_()
    return [
        (ops.token_gather, (leaf(2, 9, 6), ids, pos, backend)),
        (ops.token_scatter, (leaf(2, 4, 6), ids, 9, backend)),
        (ops.tubelet_gather, (clip, _ids(2, 8, 3, device=device), 16, 2, backend)),
        (ops.tubelet_gather, (window, _ids(2, 8, 3, device=device), 16, 2, backend)),
        (ops.decoder_input, (leaf(2, 4, 6), ids, _ids(2, 9, 5, device=device), leaf(6), pos, backend)),
        (ops.mask_token_grad, (torch.randn(2, 9, 6, device=device), 4, backend)),
        (ops.running_cell_ids, (torch.tensor([0, 3], device=device), 2, 4, 4, 2, backend)),
        (ops.tube_ids, (torch.rand(2, 16, device=device), 3, 12, backend)),
        (ops.recon_loss, (leaf(2, 3, 1536), video, dec, torch.ones(2, 3, device=device), 16, 2, 1, MEAN, STD,
                          backend)),
    ]


@pytest.mark.parametrize("case", kernel_cases(with_torch=True))
def test_opcheck(device, backend):
    for op, args in _opcheck_cases(device, backend):
        torch.library.opcheck(op, args)


def test_gradcheck_reference_fp64():
    ids = _ids(2, 7, 3)
    x = torch.randn(2, 7, 4, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, p: ops.token_gather(a, ids, p, "torch"), (x, pos))
    src = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: ops.token_scatter(s, ids, 7, "torch"), (src,))
    clip, tubelets = torch.randn(2, 3, 4, 8, 12, dtype=torch.float64, requires_grad=True), _ids(2, 12, 5)
    assert torch.autograd.gradcheck(lambda v: ops.tubelet_gather(v, tubelets, 4, 2, "torch"), (clip,))
    xv = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    tok = torch.randn(4, dtype=torch.float64, requires_grad=True)
    dec = _ids(2, 7, 5, 1)
    assert torch.autograd.gradcheck(lambda a, t: ops.decoder_input(a, ids, dec, t, pos.detach(), "torch"), (xv, tok))
    pred = torch.randn(2, 3, 96, dtype=torch.float64, requires_grad=True)
    video, d = torch.randn(2, 3, 2, 8, 8), _ids(2, 4, 3)
    w = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    assert torch.autograd.gradcheck(lambda p: ops.recon_loss(p, video, d, w, 4, 2, 1, MEAN, STD, "torch"), (pred,))


def test_dispatch_reasons_and_forcing(monkeypatch):
    built = not dispatch.not_supported_reasons("cpp", "token_gather", "cpu")
    assert dispatch.choose("token_gather", "cpu") == ("cpp" if built else "torch")  # never the interpreter
    assert dispatch.choose("token_gather", "cuda") == "triton"
    monkeypatch.setattr(dispatch, "native_status", lambda: (None, "the native extension (csrc/) is unavailable: "
                                                                    "not built"))
    dispatch._choose.cache_clear()
    assert dispatch.choose("token_gather", "cpu") == "torch"
    refused = dispatch.report("recon_loss", "cpu")
    assert refused["torch"] == [] and any("not built" in r for r in refused["cpp"])
    with pytest.raises(RuntimeError, match="cpp.*not built"):
        dispatch.choose("token_gather", "cpu", "cpp")
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    assert dispatch.choose("tube_ids", "cpu") == "triton"
    monkeypatch.setenv(dispatch.ENV_VAR, "cuda")  # serves CUDA tensors only: CPU tensors stay on auto
    assert dispatch.choose("token_gather", "cpu") == "torch"
    with pytest.raises(RuntimeError, match="runs cuda tensors, not cpu.*not built"):
        K.token_gather(torch.randn(1, 3, 2), torch.tensor([[0, 2]]), backend="cuda")
    monkeypatch.setenv(dispatch.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="unknown kernel backend 'fastest'"):
        dispatch.choose("token_gather", "cpu")
    monkeypatch.delenv(dispatch.ENV_VAR)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert any("TRITON_INTERPRET" in r for r in dispatch.not_supported_reasons("triton", "token_gather", "cpu"))


def test_a_native_build_without_an_op_runs_the_others(monkeypatch):
    """A library built before an op existed has no kernel for it (native.KERNELS lists what the library has): that op
    falls back with the reason, the others keep the native backend."""
    native, reason = dispatch.native_status()
    if reason:
        pytest.skip(reason)
    monkeypatch.setattr(native, "KERNELS", {k: v for k, v in native.KERNELS.items() if k[0] != "tubelet_gather"})
    dispatch._choose.cache_clear()
    assert dispatch.choose("tubelet_gather", "cpu") == "torch" and dispatch.choose("token_gather", "cpu") == "cpp"
    assert dispatch.not_supported_reasons("cpp", "tubelet_gather", "cpu") == [
        f"the native extension has no cpu kernel for tubelet_gather (built before the op existed; {native.REBUILD})"]


def test_without_triton_everything_falls_back():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch, vmae2_kernels as K\n"
            "from vmae2_kernels import dispatch\n"
            "print(dispatch.choose('token_gather', 'cuda'))\n"
            "print(K.token_gather(torch.randn(1, 3, 2), torch.tensor([[0, 2]])).shape[1])\n"
            "try:\n    dispatch.choose('token_gather', 'cuda', 'triton')\n"
            "except RuntimeError as e:\n    print('refused' if 'triton is not importable' in str(e) else e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["torch", "2", "refused"]


def test_info_groups_identical_reasons_and_says_when_there_is_no_gpu(monkeypatch):
    from vmae2_kernels.info import lines

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = lines()
    text = "\n".join(out)
    assert all(op in text for op in ops.OPS) or "cpu: every op -> " in text
    assert "triton" in text
    # no backend is claimed for CUDA tensors on a machine without a GPU; it says so in one line
    assert [line for line in out if line.startswith("cuda")] == [
        "cuda: no GPU on this machine (torch sees none): every op runs on the cpu backends above"]
    reasons = [line for line in out if line.startswith("    ")]
    assert len(reasons) == len(set(reasons)) and len(out) < 5 + 3 * len(ops.OPS)  # was 4 lines per op and device


def test_fused_backends_refuse_float64():
    """fp64 (gradcheck, oracles) always runs the reference; forcing a fused backend names the dtype."""
    assert dispatch.choose("token_gather", "cpu", "auto", torch.float64) == "torch"
    with pytest.raises(RuntimeError, match="dtype float64"):
        K.token_gather(torch.randn(1, 3, 2, dtype=torch.float64), torch.tensor([[0, 2]]), backend="triton")
