"""``VMAE2_BACKEND`` forces a backend only for the tensors it serves: a GPU-only override leaves a program's CPU work
(mask ids, planning, the ids of ``benchmarks.gpu.check`` stage b) on ``auto``, a CPU-only one its GPU work; an
explicit ``backend=`` still refuses loudly."""
import pytest
import torch

import vmae2_kernels as K
from vmae2 import masking
from vmae2_kernels import dispatch


@pytest.fixture(autouse=True)
def fresh_choices():
    dispatch.reset()
    yield
    dispatch.reset()


def _auto(op: str, device_type: str) -> str:
    return dispatch._choose(op, device_type, "auto", dispatch.interpreting(), None)


@pytest.mark.parametrize("forced", ["cuda", "triton"])
def test_gpu_only_override_leaves_cpu_tensors_on_auto(monkeypatch, forced):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # without the interpreter Triton serves CUDA tensors only
    monkeypatch.setenv(dispatch.ENV_VAR, forced)
    for op in ("token_gather", "tube_ids", "running_cell_ids"):
        assert dispatch.choose(op, "cpu") == _auto(op, "cpu") != forced
    x, ids = torch.randn(2, 6, 3), torch.tensor([[0, 4], [1, 5]])
    assert torch.equal(K.token_gather(x, ids), x.gather(1, ids[..., None].expand(-1, -1, 3)))
    grid = (4, 4, 4)  # the ids vmae2.runs.plan, vmae2.visualize and the benchmark steps build on the CPU
    assert masking.tube_ids(2, grid, 0.75).shape == (2, 16)
    assert masking.running_cell_ids(2, grid, 0.5).shape == (2, 32)
    if forced == "triton":  # the override still applies to the CUDA tensors it serves
        assert dispatch.choose("token_gather", "cuda") == "triton"


def test_cpu_only_override_leaves_cuda_tensors_on_auto(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "cpp")
    assert dispatch.choose("token_gather", "cuda") == _auto("token_gather", "cuda")
    if not dispatch.not_supported_reasons("cpp", "token_gather", "cpu"):
        assert dispatch.choose("token_gather", "cpu") == "cpp"


def test_override_applies_where_the_backend_serves(monkeypatch):
    """Triton serves CPU tensors under its interpreter; on a device it serves, a forced backend that cannot run
    still raises with the reason."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    assert dispatch.choose("tube_ids", "cpu") == "triton"
    monkeypatch.setattr(dispatch, "native_status", lambda: (None, "the native extension (csrc/) is unavailable: "
                                                                    "not built"))
    monkeypatch.setenv(dispatch.ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match="kernel backend 'cuda' cannot run token_gather on cuda tensors.*not built"):
        dispatch.choose("token_gather", "cuda")


@pytest.mark.parametrize("env", [None, "cuda"])
def test_an_explicit_backend_still_refuses(monkeypatch, env):
    if env:
        monkeypatch.setenv(dispatch.ENV_VAR, env)
    with pytest.raises(RuntimeError, match="kernel backend 'cuda' cannot run token_gather on cpu tensors: "
                                           "the cuda backend runs cuda tensors, not cpu"):
        K.token_gather(torch.randn(1, 3, 2), torch.tensor([[0, 2]]), backend="cuda")


def test_an_unknown_override_names_the_variable(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="unknown kernel backend 'fastest' in VMAE2_BACKEND.*or unset it"):
        dispatch.choose("token_gather", "cpu")
