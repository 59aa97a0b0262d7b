"""Launch limits of the kernels: grids within CUDA's per-axis limits (axis 0 up to 2^31 - 1 programs, axes 1 and 2
only 65535), block sizes of at least one element, empty widths (D = 0) launching nothing, and the CUDA loss's shared
memory opted in above 48 KB. Grids are read from the launchers with the kernels replaced by a recorder, so no large
tensor is allocated; the CUDA host helpers run in a small program built with nvcc."""
import re
import subprocess

import pytest
import torch

from vmae2_kernels import reference as R
from vmae2_kernels.masks.tiles import tube_tile
from vmae2_kernels.tiles import MAX_GRID, check_grid

from test_cuda_compile import CUDA_DIR, NVCC

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
MANY = 70_000  # tokens: past grid axis 1's 65535


class GridRecorder:
    """Stands in for a Triton kernel: records each launch grid, runs nothing."""

    def __init__(self):
        self.grids = []

    def __getitem__(self, grid):
        self.grids.append(tuple(grid))
        return lambda *args, **kwargs: None


def within_limits(grid) -> bool:
    return all(n <= most for n, most in zip(grid, MAX_GRID))


@pytest.fixture
def triton_ops():
    return pytest.importorskip("vmae2_kernels.triton_ops", reason="triton is not installed")


@pytest.fixture
def family(triton_ops):
    """A family's kernel module by name (``gather``, ``decoder``, ``masks``, ``loss``): where its launchers look up
    their kernels and tiles."""
    return lambda name: getattr(triton_ops, f"{name}_kernels")


def test_tubelet_grid_takes_many_tokens_on_axis_0(triton_ops, family, monkeypatch):
    spy = GridRecorder()
    monkeypatch.setattr(family("gather"), "_tubelet_gather_kernel", spy)
    video, ids = torch.zeros(2, 3, 1, 1, 1), torch.zeros(2, MANY, dtype=torch.int64)
    triton_ops.tubelet_gather(video, ids, 1, 1)
    assert spy.grids == [(2 * MANY, 1)]


@pytest.mark.parametrize("kernel", ["_recon_loss_fwd_kernel", "_recon_loss_bwd_kernel"])
def test_loss_grid_takes_many_tokens_on_axis_0(triton_ops, family, monkeypatch, kernel):
    spy = GridRecorder()
    monkeypatch.setattr(family("loss"), kernel, spy)
    B = 2
    video, ids = torch.zeros(B, 3, 1, 1, 1), torch.zeros(B, MANY, dtype=torch.int64)
    args = (torch.zeros(B, MANY, 3), video, ids, torch.ones(B, MANY), 1, 1, 0, MEAN, STD)
    if kernel == "_recon_loss_fwd_kernel":
        triton_ops.recon_loss(*args)
    else:
        triton_ops.recon_loss_backward(torch.tensor(1.0), *args)
    assert spy.grids == [(B * MANY,)] and within_limits(spy.grids[0])


def test_check_grid_names_the_axis_past_its_limit():
    assert check_grid((2 ** 31 - 1, 65535, 65535), "op") == (2 ** 31 - 1, 65535, 65535)
    with pytest.raises(ValueError, match=r"op: launch grid axis 1 needs 65536 programs, above CUDA's 65535"):
        check_grid((1, 65536), "op")
    with pytest.raises(ValueError, match=r"axis 0 needs 2147483648 programs, above CUDA's 2147483647"):
        check_grid((2 ** 31,), "op")


@pytest.mark.parametrize("hw", [196, 1024, 16384, 16385, 40_000, 2 ** 20])
def test_tube_tile_block_sizes_are_powers_of_two_of_at_least_one(hw):
    tile = tube_tile(hw)
    assert tile["BLOCK"] >= hw
    for block in (tile["BLOCK"], tile["BLOCK_J"]):
        assert block >= 1 and block & (block - 1) == 0


def test_tube_tile_refuses_a_frame_past_triton_block_limit():
    with pytest.raises(ValueError, match=r"H'W' = 1048577 keys per frame exceeds .* use the 'torch' backend"):
        tube_tile(2 ** 20 + 1)


def test_tube_kernel_with_one_key_per_step_matches_the_reference(triton_ops, family, monkeypatch):
    """BLOCK_J = 1, the tile past H'W' = 16384, ranks correctly (on a small frame: the interpreter is slow)."""
    monkeypatch.setattr(family("masks"), "tube_tile", lambda hw: {**tube_tile(hw), "BLOCK_J": 1})
    keys = torch.rand(3, 196, generator=torch.Generator().manual_seed(0))
    keys[0, :5] = 0.5  # ties: the lower index is masked first
    on = keys.to("cuda") if torch.cuda.is_available() else keys  # compiled on a GPU, else the interpreter
    for masked in (0, 100, 195):
        assert torch.equal(triton_ops.tube_ids(on, 2, masked).cpu(), R.tube_ids(keys, 2, masked))


def test_zero_width_launches_nothing(triton_ops):
    """D = 0 (or C = 0): the launchers return the empty result without a zero-sized block."""
    x, ids = torch.zeros(2, 5, 0), torch.tensor([[0, 3], [1, 4]])
    grad = torch.zeros(2, 5, 0)
    assert torch.equal(triton_ops.mask_token_grad(grad, 2), R.mask_token_grad(grad, 2))
    assert triton_ops.token_gather(x, ids).shape == (2, 2, 0)
    assert triton_ops.token_scatter(x[:, :2], ids, 5).shape == (2, 5, 0)
    out = triton_ops.decoder_input(x[:, :2], ids, ids, torch.zeros(0), torch.zeros(5, 0))
    assert out.shape == (2, 4, 0)


# -- CUDA: source-level checks and the host helpers ---------------------------------------------------------------

CU_SOURCES = sorted(CUDA_DIR.glob("*.cu"))  # one per op family
CU = "\n".join(p.read_text() for p in CU_SOURCES + [CUDA_DIR / "vmae2_cuda_common.cuh"])


def test_cuda_kernels_use_grid_axis_0_only():
    """Every CUDA kernel indexes its blocks by blockIdx.x: axes 1 and 2 take only 65535 blocks."""
    assert not re.search(r"blockIdx\.[yz]|gridDim\.[yz]", CU)
    assert "dim3" not in CU


def test_cuda_launches_with_dynamic_shared_memory_opt_in_first():
    """Each launch with dynamic shared memory passes `smem`, which allow_smem has granted to the same kernel."""
    launches = re.findall(r"(\w+(?:<[^<>]*>)?)<<<[^,]+, [^,]+, ([^,]+), stream>>>", CU)
    dynamic = [(kernel, smem) for kernel, smem in launches if smem != "0"]
    assert len(dynamic) == 3, dynamic  # running-cell ids, tube ids, the loss
    for kernel, smem in dynamic:
        assert smem == "smem" and f"allow_smem({kernel}, smem)" in CU, kernel
    assert "cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize" in CU


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed (CUDA sources are compiled only where it is)")
def test_cuda_host_helpers(tmp_path):
    """mask_token_grad's 1-D grid for B * Nd rows past 64 x 65535, the loss's shared memory (48 KB is passed from
    t * p * p = 4086 pixels on), and decoder_input's refusal of an output dtype its inputs do not promote to."""
    main = tmp_path / "main.cu"
    main.write_text("""#include <cstdio>
#include "vmae2_cuda.h"
int main() {
  const auto a = vmae2::mask_token_grad_launch(int64_t{64} * 70000, 768);
  const auto b = vmae2::mask_token_grad_launch(1, 13);
  std::printf("%lld %d %lld %d\\n", (long long)a.blocks, a.threads, (long long)b.blocks, b.threads);
  std::printf("%zu %zu %zu\\n", vmae2::recon_loss_smem_bytes(16, 2), vmae2::recon_loss_smem_bytes(1, 4085),
              vmae2::recon_loss_smem_bytes(1, 4086));
  using vmae2::DType;  // decoder_input: a bf16 output needs x and the table in bf16; no rows launch nothing
  std::printf("%d %d\\n", (int)vmae2::launch_decoder_input(DType::kBFloat16, nullptr, nullptr, nullptr, nullptr,
                                                          DType::kFloat32, nullptr, DType::kBFloat16, nullptr, 1, 1,
                                                          1, 8, nullptr),
              (int)vmae2::launch_decoder_input(DType::kBFloat16, nullptr, nullptr, nullptr, nullptr, DType::kFloat32,
                                               nullptr, DType::kBFloat16, nullptr, 0, 1, 1, 8, nullptr));
}
""")
    exe = tmp_path / "main"
    build = subprocess.run([NVCC, "-std=c++20", "-arch=sm_90", f"-I{CUDA_DIR}", str(main),
                            *map(str, CU_SOURCES), "-o", str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    grid, smem, dec = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split("\n")[:3]
    assert dec.split() == ["1", "0"]  # cudaErrorInvalidValue, cudaSuccess
    assert grid.split() == [str(70000 * 6), "128", "1", "32"]
    assert [int(v) for v in smem.split()] == [(3 * 512 + 32) * 4, (3 * 4085 + 32) * 4, (3 * 4086 + 32) * 4]
    assert (3 * 4085 + 32) * 4 <= 48 * 1024 < (3 * 4086 + 32) * 4
