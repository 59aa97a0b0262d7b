"""The native ``running_cell_ids`` called directly (``torch.ops.vmae2_native``, bypassing the op layer's checks):
any integer phase, negative and huge included, is taken modulo 4 into 0..3, so each row has exactly its kept count
of in-range ids, as the reference gives; the binding refuses malformed arguments itself."""
import pytest
import torch

from vmae2_kernels import dispatch
from vmae2_kernels import reference as R

INT64 = torch.iinfo(torch.int64)
# negative phases (C's % keeps the sign), multiples of 4, and phases whose sum with the cell code overflows int64
PHASES = [-1, -5, -2, -3, -4, 7, 2**40 + 1, -(2**40) - 3, INT64.max, INT64.max - 1, INT64.min, INT64.min + 1]
GRIDS = [(1, 2, 2), (3, 4, 6), (2, 14, 14)]


def _native_op(device):
    native, reason = dispatch.native_status()
    if reason:
        pytest.skip(reason)
    if ("running_cell_ids", device) not in native.KERNELS:
        pytest.skip(f"the native build has no {device} running_cell_ids kernel (backends: {native.DEVICES})")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    return torch.ops.vmae2_native.running_cell_ids


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("m", [0, 1, 2, 3, 4])
def test_any_phase_is_taken_modulo_4(grid, m, device):
    op = _native_op(device)
    phase = torch.tensor(PHASES, device=device)
    out = op(phase, *grid, m)
    T, H, W = grid
    N = T * H * W
    assert out.shape == (len(PHASES), N * (4 - m) // 4) and out.dtype == torch.int64
    assert ((0 <= out) & (out < N)).all() and (out.diff(dim=1) > 0).all()  # in range, ascending, unique
    assert torch.equal(out, R.running_cell_ids(phase.remainder(4), grid, m))
    small = phase.abs() < 2**62  # the reference's own % needs no overflow room: the raw phase gives the same ids
    assert torch.equal(out[small], R.running_cell_ids(phase[small], grid, m))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_binding_refuses_bad_arguments(device):
    op = _native_op(device)
    phase = torch.tensor([0, 3], device=device)
    with pytest.raises(RuntimeError, match=r"phase must be a \[B\] integer tensor, got \[2\] Float"):
        op(phase.float(), 2, 4, 4, 2)
    with pytest.raises(RuntimeError, match=r"phase must be a \[B\] integer tensor, got \[1, 2\]"):
        op(phase[None], 2, 4, 4, 2)
    with pytest.raises(RuntimeError, match="even spatial grid, got T'=2, H'=4, W'=5"):
        op(phase, 2, 4, 5, 2)
    with pytest.raises(RuntimeError, match="T' >= 1 .* got T'=0"):
        op(phase, 0, 4, 4, 2)
    for m in (-1, 5):
        with pytest.raises(RuntimeError, match=f"masked_per_cell={m} must be in 0..4"):
            op(phase, 2, 4, 4, m)
    assert op(phase[:0], 2, 4, 4, 2).shape == (0, 16)  # an empty batch
