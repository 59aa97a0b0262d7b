"""The native extension (``csrc/``) as the op table :data:`KERNELS` for the dispatcher.

Importing this module only *loads* an existing build; a missing or mismatched build is an ImportError with the
reason, which the dispatcher reports before falling back. Lookup order (:func:`vmae2_kernels.build.candidates`):
the JIT build (``$VMAE2_EXT_DIR`` or ``vmae2_kernels/_build/``, made by ``python -m vmae2_kernels.build``), then the
library ``setup.py`` installed in the package. The first one whose build info matches the running torch (version
and, for a CUDA build, CUDA version) is loaded; the others are not touched (two libraries cannot both define the
``vmae2_native`` namespace). ``(op, "cuda")`` entries exist only when the loaded build has CUDA kernels.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from vmae2_kernels import build

OPS = ("token_gather", "token_scatter", "tubelet_gather", "decoder_input", "mask_token_grad", "running_cell_ids",
       "tube_ids", "recon_loss", "recon_loss_backward")
REBUILD = "rebuild with `python -m vmae2_kernels.build` (or reinstall vmae2 with --no-build-isolation)"

LIBRARY: Path | None = None  # the library this process loaded
BUILD_INFO: dict = {}


def mismatch(info: dict) -> str | None:
    """Why a build described by ``info`` cannot run with this torch (None: it can)."""
    if info.get("torch") != torch.__version__:
        return f"built for torch {info.get('torch')}, you have {torch.__version__}; {REBUILD}"
    if "cuda" in info.get("backends", ["cpu"]) and info.get("cuda") != torch.version.cuda:
        have = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only torch"
        return f"built with CUDA {info.get('cuda')} kernels, you have {have}; {REBUILD}"
    return None


def _load() -> None:
    global LIBRARY, BUILD_INFO
    reasons = []
    for library, info_path in build.candidates():
        if not library.exists():
            reasons.append(f"{library} not built")
            continue
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        why = mismatch(info) if info else f"no build info beside it ({info_path.name}); {REBUILD}"
        if why:
            reasons.append(f"{library}: {why}")
            continue
        if not hasattr(torch.ops.vmae2_native, "token_gather"):
            torch.ops.load_library(str(library))
        LIBRARY, BUILD_INFO = library, info
        return
    raise ImportError("; ".join(reasons) + " (run `python -m vmae2_kernels.build`)")


_load()


def arch_reason() -> str | None:
    """Why this build's CUDA kernels cannot run on the current GPU (None: they can, or no GPU / no CUDA kernels)."""
    if "cuda" not in BUILD_INFO.get("backends", ["cpu"]) or not torch.cuda.is_available():
        return None
    return build.arch_reason(BUILD_INFO, torch.cuda.get_device_capability())


def _bind(name: str):
    op = getattr(torch.ops.vmae2_native, name)
    if name == "running_cell_ids":
        return lambda phase, grid, m: op(phase, *grid, m)
    return op


DEVICES = tuple(BUILD_INFO.get("backends", ["cpu"]))  # the build info says which kernels were compiled
KERNELS = {(name, device): _bind(name) for name in OPS for device in DEVICES if hasattr(torch.ops.vmae2_native, name)}
"""``(op, "cpu" | "cuda") -> callable`` with the reference's signature, for the kernels this build has (a build
older than an op lacks it: the dispatcher says so and runs the others)."""
