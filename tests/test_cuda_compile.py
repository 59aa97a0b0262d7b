"""CI compiles the CUDA sources (no GPU needed) for A100 and H100 and reads ptxas' resource report."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

NVCC = shutil.which("nvcc")
SOURCES = sorted((Path(__file__).resolve().parents[1] / "csrc" / "cuda").glob("*.cu"))


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed (CUDA sources are compiled only where it is)")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_cuda_sources_compile_without_spills(source, arch, tmp_path):
    result = subprocess.run([NVCC, "-c", "-std=c++17", "-O3", f"-arch={arch}", str(source), "-o",
                             str(tmp_path / "out.o"), "-Xptxas", "-v"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = result.stdout + result.stderr
    kernels = re.findall(r"Compiling entry function '(\w+)'", report)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert len(kernels) >= 20 and len(spills) == len(kernels)  # every instantiation was compiled and reported
    assert all(s == ("0", "0") for s in spills), report
