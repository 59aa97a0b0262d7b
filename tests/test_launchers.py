"""The Triton launchers: each launches on its tensors' device, and the loss has one fixed launch configuration, so
two runs give the same bits. Under the interpreter on CPU; the multi-GPU and
CUDA-graph halves are GPU tests (and run in ``python -m benchmarks.gpu.check``)."""
import pytest
import torch

from vmae2_kernels import dispatch, ops, reference
from vmae2_kernels.loss.tiles import LOSS_TILES

triton_ops = pytest.importorskip("vmae2_kernels.triton_ops", reason="triton is not installed")
from vmae2_kernels import triton_common  # noqa: E402  (after the skip: needs triton)
from vmae2_kernels.loss import triton_kernels as loss_kernels  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
LAUNCHERS = [name for name in reference.__all__ if hasattr(triton_ops, name)]  # the references with a launcher


def _calls():
    """One small valid call of every launcher (the argument lists of the references)."""
    x, ids = torch.randn(2, 8, 4), torch.tensor([[0, 3], [2, 7]])
    video, dec = torch.randn(2, 3, 2, 32, 32), torch.tensor([[0, 2], [1, 3]])
    loss = (torch.randn(2, 2, 1536), video, dec, torch.ones(2, 2), 16, 2, 1, MEAN, STD)
    return {"token_gather": (x, ids, torch.randn(8, 4)), "token_scatter": (x[:, :2], ids, 8),
            "tubelet_gather": (video, dec, 16, 2),
            "decoder_input": (x[:, :2], ids, ids, torch.zeros(4), torch.randn(8, 4)),
            "mask_token_grad": (x, 2), "running_cell_ids": (torch.tensor([0, 3]), (2, 4, 4), 2),
            "tube_ids": (torch.rand(2, 16), 2, 12), "recon_loss": loss,
            "recon_loss_backward": (torch.tensor(1.0),) + loss}


def test_every_launcher_is_covered():
    assert sorted(LAUNCHERS) == sorted(_calls()) == sorted(ops.OPS)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_every_launcher_runs_under_its_tensors_device_guard(name, monkeypatch):
    """Triton launches on the *current* CUDA device: the launcher must guard its tensors' device (cuda:1 tensors
    must not run on cuda:0's stream)."""
    seen = []
    real = triton_common.device_guard

    def spy(device):
        seen.append(device)
        return real(device)

    monkeypatch.setattr(triton_common, "device_guard", spy)
    args = _calls()[name]
    getattr(triton_ops, name)(*args)
    assert seen == [args[0].device]


def test_loss_kernels_have_one_fixed_configuration():
    """The loss kernels are plain JIT kernels launched with the one configuration of LOSS_TILES (autotuning over 4
    and 8 warps would pick a reduction order by timing, per process)."""
    from triton.runtime.autotuner import Autotuner

    assert len(LOSS_TILES) == 1
    for kernel in (loss_kernels._recon_loss_fwd_kernel, loss_kernels._recon_loss_bwd_kernel):
        assert not isinstance(kernel, Autotuner), type(kernel)
    assert (loss_kernels.LOSS_WARPS, loss_kernels.LOSS_STAGES) == LOSS_TILES[0][1:3]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: on a CPU each backend reduces in one "
                                                          "thread order, the same bits by construction")
@pytest.mark.parametrize("backend", ["triton", "cuda", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_and_gradient_are_bit_identical_run_to_run(backend, dtype):
    if reasons := dispatch.not_supported_reasons(backend, "recon_loss", "cuda", dtype):
        pytest.skip("; ".join(reasons))
    g = torch.Generator().manual_seed(3)
    video = torch.randn(3, 3, 4, 48, 48, generator=g).cuda()  # 2 x 3 x 3 = 18 tokens
    dec = torch.stack([torch.randperm(18, generator=g)[:7].sort().values for _ in range(3)]).cuda()
    weights = torch.rand(3, 7, generator=g).cuda()
    pred = torch.randn(3, 7, 1536, generator=g).to(dtype).cuda()

    def run():
        p = pred.clone().requires_grad_()
        loss = ops.recon_loss(p, video, dec, weights, 16, 2, 1, MEAN, STD, backend)
        loss.backward()
        return loss.detach(), p.grad

    (loss_a, grad_a), (loss_b, grad_b) = run(), run()
    assert torch.equal(loss_a, loss_b) and torch.equal(grad_a, grad_b)  # the same kernels rerun: exact


def _gpu_check():
    from benchmarks.gpu import check as gpu_check

    return gpu_check


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (the device guard on hardware; "
                                                          "gpu_check runs it when it finds them)")
def test_tensors_on_the_second_gpu_give_the_reference_result():
    assert _gpu_check().check_second_device(torch.device("cuda"))["match"] == "exact"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the debug assert and the fixed loss "
                                                          "configuration on hardware; also in python -m "
                                                          "benchmarks.gpu.check)")
def test_debug_assert_and_bit_identical_loss_on_cuda():
    gpu_check = _gpu_check()
    assert "refusal" in gpu_check.check_debug_mode(torch.device("cuda"))
    assert gpu_check.check_loss_rerun(torch.device("cuda"), 4)["grad_vs_torch"]
