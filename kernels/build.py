"""``python -m vmae2_kernels.build``: compile the native CPU extension (``csrc/vmae2_cpu.cpp``) with ninja.

About 30 s on 2 cores (``MAX_JOBS`` defaults to 2); ``make install``/``make test`` run it. The library goes to
``kernels/_build/`` (or ``$VMAE2_EXT_DIR``) beside ``build_info.json``, which records the torch version so a
mismatch is reported instead of crashing. A failed build never breaks vmae2: the ops fall back to Triton/torch.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SOURCES = [ROOT.parent / "csrc" / "vmae2_cpu.cpp"]
BUILD_DIR = Path(os.environ.get("VMAE2_EXT_DIR", ROOT / "_build"))
LIBRARY = BUILD_DIR / "vmae2_native.so"
INFO = BUILD_DIR / "build_info.json"


def build(verbose: bool = False) -> Path:
    import torch
    from torch.utils import cpp_extension

    missing = [str(s) for s in SOURCES if not s.exists()]
    if missing:
        raise FileNotFoundError(f"native sources not found: {missing} (the extension builds from a source checkout)")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MAX_JOBS", "2")
    cpp_extension.load(name="vmae2_native", sources=[str(s) for s in SOURCES], build_directory=str(BUILD_DIR),
                       extra_cflags=["-O3"], is_python_module=False, verbose=verbose)
    INFO.write_text(json.dumps({"torch": torch.__version__}))
    return LIBRARY


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
