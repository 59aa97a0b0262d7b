"""The model and the loss on the fused ops: same results as the torch path, no host sync, one graph."""
import pytest
import torch
from oracle.tolerances import FP_TOL, assert_close_fp
from torch.utils._python_dispatch import TorchDispatchMode

from vmae2 import masking
from vmae2.loss import reconstruction_loss
from vmae2.models import create_model
from vmae2_kernels import dispatch, ops

pytest.importorskip("vmae2_kernels.triton_ops", reason="triton is not installed")

SYNC_OPS = {"nonzero", "item", "_local_scalar_dense", "masked_select", "unique"}


def _tiny(backend):
    torch.manual_seed(0)
    return create_model("pretrain_videomae_small_patch16_224", num_frames=4, img_size=64, kernel_backend=backend)


def _step(model, backend, B=2, seed=0, autocast=False):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(B, 3, 4, 64, 64, generator=g)
    enc = masking.tube_ids(B, model.grid, 0.75, generator=g)
    dec = masking.running_cell_ids(B, model.grid, 0.5, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        pred = model(video, enc, dec)
        loss = reconstruction_loss(pred, video, enc, dec, patch_size=16, backend=backend)
    loss.backward()
    return pred, loss, {n: p.grad for n, p in model.named_parameters()}


def test_triton_path_matches_torch_path_fp32():
    pred_t, loss_t, grads_t = _step(_tiny("triton"), "triton")
    pred_r, loss_r, grads_r = _step(_tiny("torch"), "torch")
    assert_close_fp(loss_t, loss_r)
    assert_close_fp(pred_t, pred_r)
    for name, g in grads_r.items():
        assert_close_fp(grads_t[name], g, msg=name)


def test_triton_path_matches_torch_path_bf16_autocast():
    """bf16: loss within the bf16 tolerance; every output and gradient no further from the fp32 result than twice
    torch's own bf16 error plus the bf16 tolerance (two ulps) of its scale (the interpreter truncates bf16 casts,
    so bit equality is not expected here)."""
    pred_t, loss_t, grads_t = _step(_tiny("triton"), "triton", autocast=True)
    pred_b, loss_b, grads_b = _step(_tiny("torch"), "torch", autocast=True)
    pred_f, _, grads_f = _step(_tiny("torch"), "torch")
    assert_close_fp(loss_t, loss_b, torch.bfloat16, scale=0)  # fp32 losses of bf16 predictions
    rtol_bf16 = FP_TOL[torch.bfloat16][0]

    def within(a, b, exact):
        return (a.float() - exact).abs().max() <= 2 * (b.float() - exact).abs().max() + rtol_bf16 * exact.abs().max()

    assert within(pred_t, pred_b, pred_f)
    for name, g in grads_f.items():
        assert within(grads_t[name], grads_b[name], g), name


def test_env_var_forces_triton_for_the_whole_model(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    dispatch.reset()
    calls = []
    import vmae2_kernels.triton_ops as tops

    for name in ("tubelet_gather", "decoder_input", "recon_loss", "tube_ids", "running_cell_ids"):
        fn = getattr(tops, name)
        monkeypatch.setattr(tops, name, lambda *a, _fn=fn, _n=name, **k: calls.append(_n) or _fn(*a, **k))
    _, loss_env, _ = _step(_tiny("auto"), "auto")
    monkeypatch.delenv(dispatch.ENV_VAR)
    dispatch.reset()
    _, loss_ref, _ = _step(_tiny("torch"), "torch")
    assert set(calls) == {"tubelet_gather", "decoder_input", "recon_loss", "tube_ids", "running_cell_ids"}
    assert_close_fp(loss_env, loss_ref)


class CountSyncs(TorchDispatchMode):
    """Records the aten ops that force a device-to-host sync (or produce data-dependent shapes), including those
    inside custom ops: a plain dispatch mode sees a custom op (``vmae2::``, ``vmae2_native::``) as one opaque call, so
    its body (Python for the Triton/torch backends, C++ for the native one) is run again under this mode, by
    redispatching to the tensors' backend key with the mode on the stack."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.seen.append(name)
        if name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]):
            self.seen.append("index with a bool mask")  # calls nonzero below the Python dispatcher
        if func.namespace in ("aten", "prim", "prims"):
            return func(*args, **kwargs)
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        key = torch._C.DispatchKey.CUDA if device.type == "cuda" else torch._C.DispatchKey.CPU
        with self:  # the body's own aten calls come back here
            return func.redispatch(torch._C.DispatchKeySet(key), *args, **kwargs)


@torch.library.custom_op("vmae2_test::syncing_probe", mutates_args=())
def _syncing_probe(x: torch.Tensor) -> torch.Tensor:
    """A deliberately syncing op: ``.item()`` and a boolean-mask index inside its body."""
    return x[x > 0].sum().reshape(1) * int(x.abs().max().item())


def test_sync_detector_sees_inside_custom_ops():
    """Syncs inside a custom op are counted, not only the opaque op call."""
    with CountSyncs() as mode:
        _syncing_probe(torch.randn(8))
    assert set(mode.seen) == {"item", "index with a bool mask"}, mode.seen


def test_sync_detector_enters_every_backend():
    """The bodies it re-runs are the real ones: each backend's implementation is called inside the mode."""
    entered = []

    class Spy(CountSyncs):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            entered.append(str(func.namespace))
            return super().__torch_dispatch__(func, types, args, kwargs)

    backends = [b for b in ("torch", "cpp", "triton") if not dispatch.not_supported_reasons(b, "token_gather", "cpu")]
    x, ids = torch.randn(2, 5, 3), torch.tensor([[0, 1], [2, 4]])
    for backend in backends:
        entered.clear()
        with Spy() as mode:
            out = ops.token_gather(x, ids, None, backend)
        assert out.shape == (2, 2, 3) and mode.seen == []
        inner = {"torch": "aten", "cpp": "vmae2_native", "triton": "aten"}[backend]  # triton: the output's empty
        assert entered[0] == "vmae2" and inner in entered[1:], (backend, entered)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_masked_step_has_no_host_sync(backend):
    """The backends of the GPU path (Triton is what `auto` runs on CUDA; torch its fallback). The cpp backend is
    CPU-only and reads host scalars with .item() in its loss backward, which the detector does see: on the CPU that
    reads memory the kernel reads anyway; its CUDA twin takes the scale as a device pointer."""
    model = _tiny(backend)
    with CountSyncs() as mode:
        _step(model, backend)
    assert mode.seen == []


def test_bool_mask_path_is_the_one_that_syncs():
    """The check above can fail: bool masks read the visible count on the host."""
    model = _tiny("torch")
    video = torch.randn(1, 3, 4, 64, 64)
    enc = masking.tube_mask(1, model.grid, 0.75)
    with CountSyncs() as mode:
        model(video, enc, None)
    assert mode.seen


def test_compiled_step_has_no_graph_break():
    model = _tiny("torch")
    video = torch.randn(2, 3, 4, 64, 64)

    def step(video):  # masks drawn inside the graph from the global RNG (a Generator cannot be traced)
        enc = masking.tube_ids(2, model.grid, 0.75)
        dec = masking.running_cell_ids(2, model.grid, 0.5)
        pred = model(video, enc, dec)
        return reconstruction_loss(pred, video, enc, dec, patch_size=16)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.manual_seed(5)
    eager = step(video)
    (grad,) = torch.autograd.grad(eager, model.mask_token)
    torch.manual_seed(5)  # the same masks from the global RNG
    loss = compiled(video)
    loss.backward()
    # aot_eager runs the same ATen ops as eager: the loss and the mask token's gradient match it
    assert_close_fp(loss, eager)
    assert_close_fp(model.mask_token.grad, grad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: checks the step with sync debug 'error'")
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cuda_step_runs_with_sync_debug_error(backend):
    model = _tiny(backend).cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    video = torch.randn(4, 3, 4, 64, 64, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        enc = masking.tube_ids(4, model.grid, 0.75, generator=g)
        dec = masking.running_cell_ids(4, model.grid, 0.5, generator=g)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            pred = model(video, enc, dec)
            loss = reconstruction_loss(pred, video, enc, dec, patch_size=16, backend=backend)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()
