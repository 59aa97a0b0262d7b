"""The native CPU extension (``csrc/vmae2_cpu.cpp``) as ``<op>_cpu`` callables for the dispatcher.

Importing this module only *loads* an existing build (``python -m vmae2_kernels.build`` makes one); a missing or
mismatched build is an ImportError with the reason, which the dispatcher reports before falling back.
"""
from __future__ import annotations

import json

import torch

from vmae2_kernels.build import INFO, LIBRARY

OPS = ("token_gather", "token_scatter", "decoder_input", "mask_token_grad", "running_cell_ids", "tube_ids",
       "recon_loss", "recon_loss_backward")


def _load() -> None:
    if not LIBRARY.exists():
        raise ImportError(f"not built (run `python -m vmae2_kernels.build`; expected {LIBRARY})")
    built_for = json.loads(INFO.read_text()).get("torch") if INFO.exists() else None
    if built_for != torch.__version__:
        raise ImportError(f"built for torch {built_for}, you have {torch.__version__}; rebuild with "
                          f"`python -m vmae2_kernels.build`")
    if not hasattr(torch.ops.vmae2_native, "token_gather"):
        torch.ops.load_library(str(LIBRARY))


_load()


def _bind(name: str):
    op = getattr(torch.ops.vmae2_native, name)
    if name == "running_cell_ids":
        return lambda phase, grid, m: op(phase, *grid, m)
    return op


for _name in OPS:
    globals()[f"{_name}_cpu"] = _bind(_name)
