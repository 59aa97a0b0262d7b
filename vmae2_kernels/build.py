"""Build configuration of the native extension (``csrc/``), shared by ``setup.py`` and the JIT build.

``python -m vmae2_kernels.build`` compiles it in place with ninja (``torch.utils.cpp_extension.load``): the path for
source checkouts and editable installs (``make install``/``make test`` run it; ~15-40 s on 2 cores for the CPU
part). The library goes to ``vmae2_kernels/_build/`` (or ``$VMAE2_EXT_DIR``) beside ``build_info.json``.
A regular ``pip install --no-build-isolation .`` builds the same sources through ``setup.py`` into the package
(``vmae2_kernels/_vmae2_native*.so`` beside ``_vmae2_native.json``). :mod:`vmae2_kernels.native` loads the first
build that matches the running torch, in the order of :func:`candidates`.

What is built: the CPU ops always (``csrc/<family>_cpu.cpp``, one per op family, registered with every schema by
``csrc/vmae2_ops.cpp``); the CUDA kernels (``csrc/cuda/<family>_cuda.cu``) and their torch binding
(``csrc/cuda/vmae2_cuda_binding.cpp``) too when torch is a CUDA build and ``nvcc`` is found, unless
``VMAE2_BUILD_CUDA=0``. ``TORCH_CUDA_ARCH_LIST`` is respected; unset, the visible GPU's architecture is compiled,
else (no GPU visible: a build node) ``8.0;9.0+PTX``: A100 and H100 code plus PTX for later GPUs. The list is recorded
in the build info and :mod:`vmae2_kernels.native` compares it with the running GPU (:func:`arch_reason`). ``MAX_JOBS`` defaults to ``min(4, cpu count)``. The build info records the torch, CUDA and
compiler versions so a mismatch is reported by name instead of crashing the loader.

This module imports torch only inside functions: ``setup.py`` loads it by path before knowing torch is there.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent  # the vmae2_kernels package
CSRC = ROOT.parent / "csrc"
NAME = "vmae2_native"
FAMILIES = ("gather", "decoder", "masks", "loss")  # one CPU source and one CUDA source per op family
CPU_SOURCES = [CSRC / "vmae2_ops.cpp"] + [CSRC / f"{family}_cpu.cpp" for family in FAMILIES]
CUDA_SOURCES = [CSRC / "cuda" / f"{family}_cuda.cu" for family in FAMILIES] + [CSRC / "cuda" / "vmae2_cuda_binding.cpp"]
HEADERS = [CSRC / "vmae2_checks.h", CSRC / "vmae2_cpu.h", CSRC / "cuda" / "vmae2_cuda.h",
           CSRC / "cuda" / "vmae2_cuda_common.cuh"]
BUILD_DIR = Path(os.environ.get("VMAE2_EXT_DIR", ROOT / "_build"))
LIBRARY = BUILD_DIR / f"{NAME}.so"  # the JIT build
INFO = BUILD_DIR / "build_info.json"
PACKAGE_STEM = f"_{NAME}"  # setup.py's build: vmae2_kernels/_vmae2_native<ext suffix> + _vmae2_native.json
DEFAULT_ARCH = "8.0;9.0+PTX"  # no GPU visible: A100, H100, and PTX the driver compiles for later GPUs
# -fopenmp: at::parallel_for is OpenMP code inlined into this library; without the flag every loop runs on one thread.
# Nothing links an OpenMP runtime here: the symbols resolve to the one torch itself loads (one thread pool).
CXX_FLAGS = ["-O3", "-fopenmp"]
NVCC_FLAGS = ["-O3"]  # torch adds -std=c++20 and its -D__CUDA_NO_HALF_OPERATORS__ family


def candidates() -> list[tuple[Path, Path]]:
    """``(library, build info)`` pairs the loader tries, in order: the JIT build (``$VMAE2_EXT_DIR`` or
    ``vmae2_kernels/_build``: an explicit developer step, so it wins in a checkout), then the one ``setup.py`` put in the
    installed package."""
    installed = sorted(p for p in ROOT.glob(f"{PACKAGE_STEM}.*") if p.suffix in (".so", ".pyd", ".dylib"))
    pairs = [(LIBRARY, INFO)]
    pairs += [(lib, ROOT / f"{PACKAGE_STEM}.json") for lib in installed[:1]]
    if not installed:
        pairs.append((ROOT / f"{PACKAGE_STEM}.so", ROOT / f"{PACKAGE_STEM}.json"))  # named in "not built" messages
    return pairs


def max_jobs() -> str:
    """Ninja's parallelism: ``$MAX_JOBS`` if set, else ``min(4, cpu count)`` (nvcc jobs take GBs of memory)."""
    return os.environ.get("MAX_JOBS") or str(max(1, min(4, os.cpu_count() or 1)))


def torch_cuda_home() -> str | None:
    """The CUDA home torch's extension build uses (``torch.utils.cpp_extension.CUDA_HOME``: the environment, nvcc
    on PATH, else ``/usr/local/cuda``); None without torch."""
    try:
        from torch.utils import cpp_extension
    except ImportError:
        return None
    return getattr(cpp_extension, "CUDA_HOME", None)


def nvcc_path() -> str | None:
    """nvcc from ``$CUDA_HOME`` / ``$CUDA_PATH``, then PATH, then where torch looks (:func:`torch_cuda_home`)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    home = torch_cuda_home()
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return None


def cuda_skip_reason() -> str | None:
    """Why the CUDA part is not built (None: it is)."""
    import torch

    if os.environ.get("VMAE2_BUILD_CUDA") == "0":
        return "VMAE2_BUILD_CUDA=0"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build (the binding needs libtorch_cuda)"
    if nvcc_path() is None:
        return "nvcc was not found (not in $CUDA_HOME, on PATH or in torch's CUDA home; set CUDA_HOME)"
    return None


def cuda_arch_list() -> str:
    """``$TORCH_CUDA_ARCH_LIST`` if set, else the visible GPU's capability, else :data:`DEFAULT_ARCH`."""
    import torch

    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    return DEFAULT_ARCH


def runs_on(arch_list: str, capability: tuple[int, int]) -> bool:
    """Whether a build for ``arch_list`` (``TORCH_CUDA_ARCH_LIST`` syntax: ``"8.0;9.0+PTX"``, spaces or ``;``) has
    code for a GPU of ``capability``: SASS of the same major version and a minor version not above the GPU's
    (``8.0`` runs on 8.6), or PTX of a version not above it (``9.0+PTX`` runs on 10.0). Arch-specific targets
    (``9.0a``) run on exactly that capability."""
    for entry in re.split(r"[;\s]+", arch_list.strip()):
        match = re.fullmatch(r"(\d+)\.(\d+)([af]?)(\+PTX)?", entry)
        if not match:
            continue
        version, specific, ptx = (int(match[1]), int(match[2])), bool(match[3]), bool(match[4])
        if version == tuple(capability) or not specific and (
                version[0] == capability[0] and version[1] <= capability[1] or ptx and version <= tuple(capability)):
            return True
    return False


def arch_reason(info: dict, capability: tuple[int, int]) -> str | None:
    """Why the CUDA kernels of the build described by ``info`` cannot run on a GPU of ``capability`` (None: they
    can, or the build has no CUDA kernels)."""
    if "cuda" not in info.get("backends", ["cpu"]):
        return None
    archs = info.get("cuda_arch_list") or ""
    if runs_on(archs, capability):
        return None
    cap = f"{capability[0]}.{capability[1]}"
    return (f"the native CUDA kernels were built for {archs!r}, which has no code for this GPU (compute capability "
            f"{cap}); rebuild with TORCH_CUDA_ARCH_LIST=\"{cap}\" python -m vmae2_kernels.build")


def nvcc_version() -> str | None:
    nvcc = nvcc_path()
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[-1] if out.strip() else None


def plan() -> dict:
    """What to build here: ``{"cuda": bool, "cuda_skipped": reason, "sources": [...], "arch": ..., "jobs": ...}``;
    sets ``MAX_JOBS`` and (for CUDA) ``TORCH_CUDA_ARCH_LIST`` in the environment, which torch's build reads."""
    missing = [str(s) for s in CPU_SOURCES + CUDA_SOURCES + HEADERS if not s.exists()]
    if missing:
        raise FileNotFoundError(f"native sources not found: {missing} (the extension builds from a source checkout)")
    os.environ["MAX_JOBS"] = max_jobs()
    reason = cuda_skip_reason()
    sources = CPU_SOURCES + ([] if reason else CUDA_SOURCES)
    arch = None
    if reason is None:
        arch = os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list()
    return {"cuda": reason is None, "cuda_skipped": reason, "sources": [str(s) for s in sources], "arch": arch,
            "jobs": os.environ["MAX_JOBS"]}


def build_info(built: dict, builder: str) -> dict:
    """Recorded next to the library; :mod:`vmae2_kernels.native` compares it with the running torch."""
    import torch

    return {"torch": torch.__version__, "cuda": torch.version.cuda if built["cuda"] else None,
            "backends": ["cpu", "cuda"] if built["cuda"] else ["cpu"], "cuda_arch_list": built["arch"],
            "cuda_skipped": built["cuda_skipped"], "nvcc": nvcc_version() if built["cuda"] else None,
            "python": platform.python_version(), "platform": platform.platform(), "builder": builder}


def build(verbose: bool = False) -> Path:
    """JIT-build into ``BUILD_DIR`` with ninja; returns the library path."""
    from torch.utils import cpp_extension

    built = plan()
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    INFO.unlink(missing_ok=True)  # a failed build leaves no info: the loader then reports "not built"
    cpp_extension.load(name=NAME, sources=built["sources"], build_directory=str(BUILD_DIR),
                       extra_cflags=CXX_FLAGS, extra_cuda_cflags=NVCC_FLAGS, with_cuda=built["cuda"],
                       is_python_module=False, verbose=verbose)
    INFO.write_text(json.dumps(build_info(built, "jit (python -m vmae2_kernels.build)"), indent=1))
    if built["cuda_skipped"]:
        print(f"vmae2: CPU ops only ({built['cuda_skipped']})", file=sys.stderr)
    return LIBRARY


def start_in_background(env: dict, log, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``python -m vmae2_kernels.build`` in its own session (a new process group), output to ``log``: its
    compilers (ninja, nvcc, cicc, ptxas) join that group, so :func:`stop` ends them all."""
    return subprocess.Popen([sys.executable, "-m", "vmae2_kernels.build"], cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """Kill a build started by :func:`start_in_background` and every process of its group, then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):  # gone already, or no process groups here
        proc.kill()
    proc.wait()


def main() -> int:
    try:
        print(f"built {build(verbose='-v' in sys.argv)}")
        return 0
    except Exception as exc:  # report, never break an install
        print(f"vmae2: the native extension did not build ({type(exc).__name__}: {exc}); the Triton/torch "
              f"backends are used instead", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
