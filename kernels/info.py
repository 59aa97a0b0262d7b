"""``python -m vmae2_kernels.info``: versions, devices and the backend status of every op."""
from __future__ import annotations

import importlib.metadata
import platform

import torch

from vmae2_kernels import dispatch
from vmae2_kernels.ops import OPS


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def lines() -> list[str]:
    out = [f"python {platform.python_version()}  torch {torch.__version__} (CUDA {torch.version.cuda})",
           f"triton {_version('triton')}  vmae2 {_version('vmae2')}  "
           f"TRITON_INTERPRET={'1' if dispatch.interpreting() else 'unset'}"]
    native, reason = dispatch.native_status()
    if native is None:
        out.append(f"native extension: {reason}")
    else:
        info = native.BUILD_INFO
        cuda = (f"CUDA {info.get('cuda')} for {info.get('cuda_arch_list')}" if "cuda" in info.get("backends", [])
                else f"no CUDA kernels: {info.get('cuda_skipped')}")
        out.append(f"native extension: {native.LIBRARY} (torch {info.get('torch')}, built by {info.get('builder')}; "
                   f"{cuda})")
    if torch.cuda.is_available():
        cap = torch.cuda.get_device_capability()
        out.append(f"GPU {torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]})")
    else:
        out.append("GPU none")
    for op in OPS:
        for device in ("cpu", "cuda"):
            try:
                chosen = dispatch.choose(op, device)
            except RuntimeError as exc:
                chosen = f"error: {exc}"
            out.append(f"{op:22s} {device:4s} -> {chosen}")
            for backend, reasons in dispatch.report(op, device).items():
                if reasons:
                    out.append(f"{'':27s}{backend}: " + "; ".join(reasons))
    return out


def main() -> int:
    print("\n".join(lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
