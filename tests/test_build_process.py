"""Finding nvcc and stopping a background build of the native extension (vmae2_kernels/build.py), with fakes: an nvcc
found only where torch looks (its CUDA home), and a "build" whose compiler child must end with it."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmae2_kernels import build

ROOT = Path(__file__).resolve().parents[1]


def _fake_nvcc(home: Path) -> Path:
    nvcc = home / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 99.9'\n")
    nvcc.chmod(0o755)
    return nvcc


@pytest.fixture
def no_nvcc_in_env(monkeypatch, tmp_path):
    """No CUDA_HOME / CUDA_PATH and a PATH without nvcc."""
    for name in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "empty_path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_nvcc_is_found_where_torch_looks(no_nvcc_in_env, tmp_path, monkeypatch):
    from torch.utils import cpp_extension

    nvcc = _fake_nvcc(tmp_path / "cuda")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(tmp_path / "cuda"))
    assert build.torch_cuda_home() == str(tmp_path / "cuda")
    assert build.nvcc_path() == str(nvcc)
    assert build.nvcc_version() == "Cuda compilation tools, release 99.9"


def test_the_environment_wins_over_torchs_cuda_home(no_nvcc_in_env, tmp_path, monkeypatch):
    torch_nvcc, env_nvcc = _fake_nvcc(tmp_path / "torch_cuda"), _fake_nvcc(tmp_path / "env_cuda")
    monkeypatch.setattr(build, "torch_cuda_home", lambda: str(tmp_path / "torch_cuda"))
    assert build.nvcc_path() == str(torch_nvcc)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "env_cuda"))
    assert build.nvcc_path() == str(env_nvcc)


def test_no_nvcc_anywhere_names_every_place_looked(no_nvcc_in_env, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(build, "torch_cuda_home", lambda: str(tmp_path / "nothing_here"))
    assert build.nvcc_path() is None
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.delenv("VMAE2_BUILD_CUDA", raising=False)
    reason = build.cuda_skip_reason()
    assert "nvcc was not found" in reason and "$CUDA_HOME, on PATH or in torch's CUDA home" in reason


FAKE_BUILD = """#!/bin/sh
sleep 300 &
echo $! > "{pid_file}"
wait
"""


def _gone(pid: int) -> bool:
    """The process has ended (no entry, or a zombie waiting for its new parent to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


@pytest.mark.skipif(not hasattr(os, "killpg") or not Path("/proc").is_dir(), reason="needs POSIX process groups")
def test_stopping_a_build_ends_its_compiler_children(tmp_path, monkeypatch):
    """The build starts in its own process group; stop() kills the group: the "compiler" it started ends too (a
    plain kill of the build would leave it running)."""
    pid_file = tmp_path / "child.pid"
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_BUILD.format(pid_file=pid_file))
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    with open(tmp_path / "build.log", "w") as log:
        proc = build.start_in_background(dict(os.environ), log, cwd=tmp_path)
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)  # its own group
    assert os.getpgid(child) == proc.pid and not _gone(child)
    try:
        build.stop(proc)
        deadline = time.monotonic() + 5
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.returncode == -signal.SIGKILL
        assert _gone(child), "the compiler child outlived the stopped build"
    finally:
        if not _gone(child):
            os.kill(child, signal.SIGKILL)


def test_gpu_check_stops_a_build_past_its_wait(monkeypatch):
    from benchmarks.gpu import check as gpu_check

    class Slow:
        def wait(self, timeout=None):
            raise subprocess.TimeoutExpired("build", timeout)

    stopped = []
    monkeypatch.setattr(build, "stop", stopped.append)
    proc = Slow()
    assert gpu_check.finish_native_build(proc, "ext", 2.0) == "the build did not finish within 2 s"
    assert stopped == [proc]
