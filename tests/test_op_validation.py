"""One validation layer before dispatch (issue 14, findings 1, 2 and 8): every backend refuses the same bad input
with the same message, and takes the same good input the same way."""
import pytest
import torch

from vmae2_kernels import dispatch, ops
from vmae2_kernels.reference import running_cell_ids as reference_running_cell_ids

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _backends():
    out = ["torch"]
    if not dispatch.not_supported_reasons("cpp", "recon_loss", "cpu", torch.float32):
        out.append("cpp")
    if not dispatch.not_supported_reasons("triton", "recon_loss", "cpu", torch.float32):
        out.append("triton")  # under TRITON_INTERPRET=1 (tests/conftest.py)
    return out


BACKENDS = _backends()


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_and_large_phases_are_taken_modulo_4(backend):
    """Finding 1: C's truncating % gave garbage for a negative phase in compiled kernels (cpp showed it here)."""
    phase = torch.tensor([-2, 1, 7, -5])
    got = ops.running_cell_ids(phase, 2, 4, 4, 2, backend)
    assert torch.equal(got, reference_running_cell_ids(phase.remainder(4), (2, 4, 4), 2))  # ids: exact


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("args,match", [
    ((torch.tensor([0, 1]), 2, 3, 4, 2), "even spatial grid, got H'=3, W'=4"),
    ((torch.tensor([0.0, 1.0]), 2, 4, 4, 2), "phase must be a \\[B\\] integer tensor"),
    ((torch.tensor([[0, 1]]), 2, 4, 4, 2), "phase must be a \\[B\\] integer tensor"),
])
def test_running_cell_refusals_are_the_same_everywhere(backend, args, match):
    with pytest.raises(ValueError, match=match):
        ops.running_cell_ids(*args, backend)


def _loss_args(pred_width=1536, tokens=3, weights=None, patch=16):
    video = torch.randn(2, 3, 4, 2 * patch, 2 * patch)  # grid (2, 2, 2)
    dec = torch.tensor([[0, 2, 5], [1, 3, 7]])[:, :tokens]
    weights = torch.ones(2, tokens) if weights is None else weights
    return torch.randn(2, tokens, pred_width), video, dec, weights, patch, 2, True, MEAN, STD


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs,match", [
    (dict(pred_width=1536, patch=14), "pred has shape \\(2, 3, 1536\\); expected .* = \\[2, 3, 1176\\]"),  # wider
    (dict(pred_width=1000), "pred has shape \\(2, 3, 1000\\); expected .* = \\[2, 3, 1536\\]"),  # narrower
    (dict(weights=torch.ones(2, 16)), "weights has shape \\(2, 16\\); expected \\[B, Nd\\] = \\[2, 3\\]"),
])
def test_loss_refusals_are_the_same_everywhere_forward_and_backward(backend, kwargs, match):
    """Finding 2: Triton returned a loss for a too-wide pred (2.0009), NaN for a too-narrow one, and its backward
    left the gradient partly unwritten or wrote past its end."""
    args = _loss_args(**kwargs)
    with pytest.raises(ValueError, match=match):
        ops.recon_loss(*args, backend)
    with pytest.raises(ValueError, match=match):
        ops.recon_loss_backward(torch.tensor(1.0), *args, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_backward_fake_matches_the_kernels_layout(backend):
    """Finding 8: the fake declared pred's strides; every backend returns a contiguous gradient."""
    pred, *rest = _loss_args()
    pred = pred.transpose(1, 2).contiguous().transpose(1, 2)  # same shape, non-contiguous
    assert not pred.is_contiguous()
    real = ops.recon_loss_backward(torch.tensor(1.0), pred, *rest, backend)
    assert real.is_contiguous()
    torch.library.opcheck(ops.recon_loss_backward, (torch.tensor(1.0), pred, *rest, backend),
                          test_utils=("test_schema", "test_faketensor"))
