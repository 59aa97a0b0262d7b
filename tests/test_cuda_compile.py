"""The CUDA sources compile on a machine without a GPU (CI), and run correctly where there is one.

* nvcc compiles the device code and launchers (``csrc/cuda/*.cu``, one per op family, no torch headers) for A100
  and H100; ptxas' resource report must list every kernel of each family with 0 spill bytes.
* The torch binding (``csrc/cuda/vmae2_cuda_binding.cpp``) is compiled by g++ against torch's and the CUDA
  toolkit's headers. The CPU torch wheel ships ``c10/cuda``/``ATen/cuda`` headers but not the generated
  ``c10/cuda/impl/cuda_cmake_macros.h`` (a CUDA wheel has it), so the check defines
  ``C10_CUDA_NO_CMAKE_CONFIGURE_FILE``; linking needs libtorch_cuda/libc10_cuda, absent here, so the check stops at
  the object file and instead requires every launcher the binding calls to be defined by the nvcc object (a
  signature drift between ``vmae2_cuda.h`` and the ``.cu`` sources would otherwise surface only at load time on a
  GPU).
* On a GPU with the CUDA build loaded, every CUDA op matches the reference.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from oracle.tolerances import assert_close_fp, fp_tol

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
NVCC = shutil.which("nvcc")
CXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
# The kernel instantiations each family's source compiles, and the op names they carry: 6 gather + 3 scatter + 3
# tubelet gather; 11 decoder input (3 x 3 dtypes of x and the table to fp32, bf16 and fp16 to themselves) + 3
# mask-token grad; running cell + tube; 18 loss (3 pred x 3 video dtypes x fwd/bwd).
KERNELS = {"gather_cuda.cu": (12, ("token_gather", "token_scatter", "tubelet_gather")),
           "decoder_cuda.cu": (14, ("decoder_input", "mask_token_grad")),
           "masks_cuda.cu": (2, ("running_cell_ids", "tube_ids")),
           "loss_cuda.cu": (18, ("recon_loss",))}
BINDING = CUDA_DIR / "vmae2_cuda_binding.cpp"
TORCH_INCLUDE = Path(torch.__file__).parent / "include"


def cuda_include() -> Path | None:
    """The CUDA toolkit's include folder (for cuda_runtime_api.h), found from CUDA_HOME, nvcc or /usr/local/cuda."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    if NVCC:
        roots.append(Path(os.path.realpath(NVCC)).parents[1])
    roots += ["/usr/local/cuda", *sorted(Path("/usr/local").glob("cuda-*"), reverse=True)]
    for root in filter(None, roots):
        if (Path(root) / "include" / "cuda_runtime_api.h").exists():
            return Path(root) / "include"
    return None


def nvcc_object(source: Path, arch: str, out: Path) -> str:
    """nvcc with the flags torch's extension build adds (C++20, no implicit half/bfloat16 operators)."""
    from torch.utils import cpp_extension

    torch_flags = getattr(cpp_extension, "COMMON_NVCC_FLAGS", [])
    result = subprocess.run([NVCC, "-c", "-std=c++20", "-O3", *torch_flags, f"-arch={arch}", str(source), "-o",
                             str(out), "-Xptxas", "-v"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed (CUDA sources are compiled only where it is)")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_cuda_sources_compile_without_spills(source, arch, tmp_path):
    report = nvcc_object(source, arch, tmp_path / "out.o")
    kernels = re.findall(r"Compiling entry function '(\w+)'", report)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    count, ops = KERNELS[source.name]  # every instantiation the launchers use was compiled and reported
    assert len(kernels) == count and len(spills) == len(kernels), kernels
    assert all(s == ("0", "0") for s in spills), report
    names = " ".join(kernels)
    assert all(k in names for k in ops)


def test_every_op_has_its_family_cuda_source():
    """One CUDA source per op family, together the 46 kernel instantiations of the eight device ops."""
    assert sorted(p.name for p in SOURCES) == sorted(KERNELS)
    assert sum(count for count, _ in KERNELS.values()) == 46
    assert sorted(op for _, ops in KERNELS.values() for op in ops) == sorted(
        ("token_gather", "token_scatter", "tubelet_gather", "decoder_input", "mask_token_grad", "running_cell_ids",
         "tube_ids", "recon_loss"))


def test_binding_registers_every_op_for_cuda():
    """The CPU registration file and the binding register, for their keys, exactly the ops whose schemas the CPU
    registration file defines (the op list in the shared header)."""
    cpu = (ROOT / "csrc" / "vmae2_ops.cpp").read_text()
    binding = BINDING.read_text()
    header = (ROOT / "csrc" / "vmae2_checks.h").read_text()
    schemas = set(re.findall(r'm\.def\("(\w+)\(', cpu))
    listed = re.search(r"#define VMAE2_NATIVE_OPS\(X\)((?:.*\\\n)*.*)", header).group(1)
    assert len(schemas) == 9 and "TORCH_LIBRARY(vmae2_native" in cpu
    assert set(re.findall(r"X\((\w+)\)", listed)) == schemas
    assert "TORCH_LIBRARY(" not in binding
    for source, key in ((cpu, "CPU"), (binding, "CUDA")):
        assert f"TORCH_LIBRARY_IMPL(vmae2_native, {key}, m) {{ VMAE2_NATIVE_OPS(VMAE2_IMPL) }}" in source
    for device_code in SOURCES + [CUDA_DIR / "vmae2_cuda_common.cuh"]:  # device code stays torch-free
        assert "#include <ATen" not in device_code.read_text(), device_code.name


@pytest.mark.skipif(NVCC is None or CXX is None or cuda_include() is None
                    or not (TORCH_INCLUDE / "c10" / "cuda" / "CUDAStream.h").exists(),
                    reason="needs nvcc, g++, the CUDA toolkit headers and torch's c10/cuda headers")
def test_binding_compiles_and_calls_only_defined_launchers(tmp_path):
    binding_o = tmp_path / "binding.o"
    result = subprocess.run(
        [CXX, "-c", "-O0", "-fPIC", "-std=c++20", "-Wall", "-Werror", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
         "-DTORCH_API_INCLUDE_EXTENSION_H", "-isystem", str(TORCH_INCLUDE),
         "-isystem", str(TORCH_INCLUDE / "torch" / "csrc" / "api" / "include"), "-isystem", str(cuda_include()),
         str(BINDING), "-o", str(binding_o)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    device_objects = [tmp_path / f"{source.stem}.o" for source in SOURCES]
    for source, obj in zip(SOURCES, device_objects):
        nvcc_object(source, "sm_90", obj)

    def symbols(obj, *flags):  # mangled names (no spaces) in the vmae2 namespace
        out = subprocess.run(["nm", "-P", *flags, str(obj)], capture_output=True, text=True, check=True).stdout
        return {line.split()[0] for line in out.splitlines() if "5vmae2" in line.split()[0]}

    needed = symbols(binding_o, "-u")
    defined = set().union(*(symbols(obj, "--defined-only") for obj in device_objects))
    assert len(needed) == 9, needed  # 8 launchers + mask_token_grad_blocks
    assert needed <= defined, needed - defined


# -- on a GPU: the CUDA kernels against the reference ---------------------------------------------------------

def _cuda_ops_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    from vmae2_kernels import dispatch
    reasons = dispatch.not_supported_reasons("cuda", "token_gather", "cuda")
    return "; ".join(reasons) or None


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_ops_reason() is not None, reason=f"CUDA ops unavailable: {_cuda_ops_reason()}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_ops_match_reference(dtype):
    import vmae2_kernels as K
    from vmae2_kernels import ops
    from vmae2_kernels import reference as R

    dev, g = torch.device("cuda"), torch.Generator().manual_seed(0)
    B, T, H, W, C = 3, 4, 6, 10, 13  # odd widths: the unvectorised gather path
    N, Kv = T * H * W, 37
    x = torch.randn(B, N, C, generator=g).to(dev, dtype)
    pos = torch.randn(N, C, generator=g).to(dev)
    ids = torch.stack([torch.randperm(N, generator=g)[:Kv].sort().values for _ in range(B)]).to(dev)
    # fp32: x + pos is one IEEE add of the same operands, correctly rounded: bit-exact. Low precision: pos is
    # rounded to dtype, then the sum once more; allow the table's two ulps (unit-scale randn operands).
    tol = dict(rtol=0, atol=0) if dtype == torch.float32 else fp_tol(dtype)
    torch.testing.assert_close(K.token_gather(x, ids, pos, backend="cuda"), R.token_gather(x, ids, pos), **tol)
    assert torch.equal(K.token_gather(x, ids, backend="cuda"), R.token_gather(x, ids))  # pure data movement
    src = torch.randn(B, Kv, C, generator=g).to(dev, dtype)
    assert torch.equal(K.token_scatter(src, ids, N, backend="cuda"), R.token_scatter(src, ids, N))  # data movement
    dec = torch.stack([torch.randperm(N, generator=g)[:50].sort().values for _ in range(B)]).to(dev)
    token = torch.randn(C, generator=g).to(dev)
    torch.testing.assert_close(K.decoder_input(x[:, :Kv], ids, dec, token, pos, backend="cuda"),
                               R.decoder_input(x[:, :Kv], ids, dec, token, pos), **tol)
    grad = torch.randn(B, Kv + 50, C, generator=g).to(dev, dtype)
    assert_close_fp(ops.mask_token_grad(grad, Kv, "cuda"), R.mask_token_grad(grad, Kv))  # fp32 sums, other order
    phase = torch.randint(0, 4, (B,), generator=g).to(dev)
    for m in (1, 2, 3):
        assert torch.equal(ops.running_cell_ids(phase, T, H, W, m, "cuda"), R.running_cell_ids(phase, (T, H, W), m))
    keys = torch.rand(B, H * W, generator=g).to(dev)
    keys[0, :5] = 0.5  # ties: the lower index is masked first
    for masked in (0, 7, H * W - 1):
        assert torch.equal(ops.tube_ids(keys, T, masked, "cuda"), R.tube_ids(keys, T, masked))
    patch, tub = 4, 2
    video = torch.randn(B, 3, 2 * T, H * patch // 2, W * patch // 2, generator=g).to(dev)
    n = 2 * T // tub * (H // 2) * (W // 2)
    dids = torch.stack([torch.randperm(n, generator=g)[:20].sort().values for _ in range(B)]).to(dev)
    # tubelet gather, pure data movement: patch 4 (fp32: 16-byte runs, vectorised; bf16/fp16: element copies) and
    # patch 16 from a window of a larger clip (strided; 16-byte runs in every dtype)
    clip = torch.randn(B, 3, 5, 40, 64, generator=g).to(dev, dtype)[:, :, 1:, 4:36, :48]
    for v, p in ((video.to(dtype), patch), (clip, 16)):
        tokens = v.shape[2] // tub * (v.shape[3] // p) * (v.shape[4] // p)
        tids = torch.stack([torch.randperm(tokens, generator=g)[:5].sort().values for _ in range(B)]).to(dev)
        assert torch.equal(K.tubelet_gather(v, tids, p, tub, backend="cuda"), R.tubelet_gather(v, tids, p, tub))
    pred = torch.randn(B, 20, 3 * tub * patch * patch, generator=g).to(dev, dtype).requires_grad_(True)
    w = (torch.rand(B, 20, generator=g) < 0.7).float().to(dev)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    for target in (0, 1, 2):  # raw, VideoMAE, MAE
        args = (video, dids, w, patch, tub, target, mean, std)
        fused = ops.recon_loss(pred, *args, "cuda")
        ref = R.recon_loss(pred, *args)
        assert_close_fp(fused, ref)  # fp32 accumulation whatever pred's dtype
        (g_fused,) = torch.autograd.grad(fused, pred)
        (g_ref,) = torch.autograd.grad(ref, pred)
        # pred - target cancels: the default scale judges errors against the gradient's scale
        assert_close_fp(g_fused.float(), g_ref.float(), dtype)
