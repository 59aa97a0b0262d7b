"""Install vmae2 and vmae2_kernels, with the native extension (``csrc/``) when it can be built.

The kernels' folder is named ``vmae2_kernels/``, as its import: a top-level ``kernels`` would hide Hugging Face's
``kernels`` package (a ``transformers`` dependency whose setuptools hook runs in every build from this folder).

The native ops build with torch's ``BuildExtension`` (ninja) into ``vmae2_kernels/_vmae2_native*.so`` when torch
and a C++ compiler are importable/installed in the build environment; the CUDA kernels are added when torch is a
CUDA build and nvcc is found (``TORCH_CUDA_ARCH_LIST`` respected; unset, the visible GPU's architecture, else
``8.0;9.0+PTX``; ``MAX_JOBS`` capped: see ``vmae2_kernels/build.py``, which this file loads by path). pip builds in an
isolated environment without torch, so to get the extension install torch first, then
``pip install --no-build-isolation .``.

The extension never fails the install: anything that stops it (no torch, no compiler, a compile error) is printed
as a warning and vmae2 installs as pure Python; the dispatcher then says why the native backend is missing and
uses Triton/torch. Editable installs skip it (``python -m vmae2_kernels.build`` is the in-place JIT build, which
``make install`` runs); ``VMAE2_NATIVE=1`` builds it for editable installs too, ``VMAE2_NATIVE=0`` never.
This file imports torch only inside the build_ext command.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import traceback
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
NATIVE = "vmae2_kernels._vmae2_native"
INFO_NAME = "_vmae2_native.json"


def build_config():
    """``vmae2_kernels/build.py`` (sources, flags, architecture and build info), loaded without importing the package."""
    spec = importlib.util.spec_from_file_location("_vmae2_build_config", HERE / "vmae2_kernels" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def warn(message: str) -> None:
    print(f"\nvmae2 WARNING: {message}\n", file=sys.stderr, flush=True)


class OptionalNativeBuild(build_ext):
    """build_ext that builds ``csrc/`` with torch's BuildExtension when it can and otherwise installs pure Python."""

    built = False

    def run(self) -> None:
        reason = self.skip_reason()
        if reason is None:
            try:
                self.build_native()
                self.built = True
                return
            except Exception as exc:  # noqa: BLE001  (never fail the install because of the extension)
                traceback.print_exc()
                reason = f"the build failed ({type(exc).__name__}: {str(exc)[-500:]})"
        self.extensions = []
        warn(f"the native extension (csrc/) is not built: {reason}. vmae2 is installed without it; the ops use "
             f"Triton/torch (`python -m vmae2_kernels.info` shows what runs where).")

    def skip_reason(self) -> str | None:
        choice = os.environ.get("VMAE2_NATIVE", "auto")
        if choice == "0":
            return "VMAE2_NATIVE=0"
        if self.editable_mode and choice != "1":
            return ("editable install: build it in place with `python -m vmae2_kernels.build` (`make install` does), "
                    "or set VMAE2_NATIVE=1")
        try:
            import torch  # noqa: F401
        except ImportError:
            return ("torch is not importable in the build environment (pip builds in isolation: install torch, "
                    "then `pip install --no-build-isolation .`)")
        compiler = os.environ.get("CXX", "c++")
        if shutil.which(compiler.split()[0]) is None:
            return f"no C++ compiler ({compiler!r} is not on PATH)"
        return None

    def build_native(self) -> None:
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

        config = CONFIG
        plan = config.plan()
        sources = [os.path.relpath(s, HERE) for s in plan["sources"]]
        flags = {"cxx": config.CXX_FLAGS, "nvcc": config.NVCC_FLAGS} if plan["cuda"] else {"cxx": config.CXX_FLAGS}
        made = (CUDAExtension if plan["cuda"] else CppExtension)(NATIVE, sources, extra_compile_args=flags)
        (ext,) = [e for e in self.extensions if e.name == NATIVE]  # already finalized by setuptools: fill it in
        for attr in ("sources", "include_dirs", "library_dirs", "libraries", "runtime_library_dirs",
                     "extra_compile_args", "extra_link_args", "define_macros", "language"):
            setattr(ext, attr, getattr(made, attr))
        print(f"vmae2: building the native extension ({'CPU + CUDA ' + plan['arch'] if plan['cuda'] else 'CPU'}; "
              f"MAX_JOBS={plan['jobs']}{'; no CUDA: ' + plan['cuda_skipped'] if plan['cuda_skipped'] else ''})",
              file=sys.stderr, flush=True)
        # torch's command does the compiling (ninja, nvcc); it takes this command's finalized options.
        cmd = BuildExtension(self.distribution)
        keep = {"use_ninja", "no_python_abi_suffix", "distribution"}
        cmd.__dict__.update({k: v for k, v in vars(self).items() if k not in keep})
        cmd.extensions = [ext]
        cmd.force = cmd.force or cmd.use_ninja
        cmd.run()
        info = json.dumps(config.build_info(plan, "setup.py"), indent=1)
        for path in self.info_paths():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(info)

    def info_paths(self) -> list[Path]:
        """Build info beside the library: in build_lib (what gets installed), and in the source tree when in place."""
        paths = [Path(self.build_lib, "vmae2_kernels", INFO_NAME)]
        if self.inplace or self.editable_mode:
            paths.append(HERE / "vmae2_kernels" / INFO_NAME)
        return paths

    def get_outputs(self) -> list[str]:
        outputs = super().get_outputs()
        return outputs + [str(p) for p in self.info_paths()[:1]] if self.built else outputs


CONFIG = build_config()
setup(
    packages=find_packages(include=["vmae2", "vmae2.*", "vmae2_kernels", "vmae2_kernels.*"]),
    # Placeholder sources (also what an sdist ships); build_native() sets the real ones for this machine.
    ext_modules=[Extension(NATIVE, sources=[str(p.relative_to(HERE)) for p in CONFIG.CPU_SOURCES + CONFIG.CUDA_SOURCES],
                           depends=[str(p.relative_to(HERE)) for p in CONFIG.HEADERS])],
    cmdclass={"build_ext": OptionalNativeBuild},
)
