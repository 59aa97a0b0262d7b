"""``python -m vmae2_kernels.info``: versions, devices, the backend status of every op, and the backend choices
measured on this machine (kernels and attention, from the cache of :mod:`vmae2_kernels.measure`)."""
from __future__ import annotations

import importlib.metadata
import platform

import torch

from vmae2_kernels import dispatch, measure
from vmae2_kernels.ops import DTYPE_FREE, OPS

OTHER_DTYPES = (torch.float64,)  # dtypes the fused kernels refuse: shown apart from the fused ones


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
    gpu = torch.cuda.is_available()
    if gpu:
        cap = torch.cuda.get_device_capability()
        out.append(f"GPU {torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]})")
    for device in ("cpu", "cuda") if gpu else ("cpu",):
        out += _device_lines(device)
    if not gpu:
        out.append("cuda: no GPU on this machine (torch sees none): every op runs on the cpu backends above")
    return out + _measured_lines()


def _measured_lines() -> list[str]:
    """The remembered measured choices of this machine, or how they come about."""
    if measure.turned_off():
        return ["measured choices: off (VMAE2_MEASURE=0): the fixed order above decides"]
    remembered = measure.choices()
    if not remembered:
        return [f"measured choices: none yet on this machine ({measure.cache_file()}); the first call of an op or an "
                f"attention at a new shape times every usable backend and keeps the fastest"]
    out = [f"measured choices ({len(remembered)}, {measure.cache_file()}), fastest first:"]
    return out + [f"    {e['kind']} [{e['key']}]: {measure.summary(e)}" for e in remembered]


def _choice(op: str, device: str, dtype=None) -> str:
    try:
        return dispatch.choose(op, device, "auto", dtype)
    except RuntimeError as exc:
        return f"error: {str(exc).replace(op, '<op>')}"


def _device_lines(device: str) -> list[str]:
    """The fixed-order backend of every op on ``device`` (what runs where nothing is measured) for the fused dtypes,
    then for each of :data:`OTHER_DTYPES` the ops that choose otherwise: ops with the same choice and reasons share
    one entry."""
    groups: dict[tuple, list[str]] = {}
    for op in OPS:
        reasons = tuple((b, "; ".join(r).replace(op, "<op>")) for b, r in dispatch.report(op, device).items() if r)
        groups.setdefault((_choice(op, device), reasons), []).append(op)
    fused = ", ".join(dispatch.FUSED_DTYPES)
    out = []
    for (chosen, reasons), ops in groups.items():
        names = "every op" if len(ops) == len(OPS) else ", ".join(ops)
        out.append(f"{device}: {names} -> {chosen} ({fused} tensors; {', '.join(DTYPE_FREE)}: any)")
        out += [f"    {backend} not used: {text}" for backend, text in reasons]
    for dtype in OTHER_DTYPES:
        name = str(dtype).replace("torch.", "")
        others: dict[str, list[str]] = {}
        for op in OPS:
            chosen = _choice(op, device, dtype)
            if op not in DTYPE_FREE and chosen != _choice(op, device):
                others.setdefault(chosen, []).append(op)
        out += [f"{device} {name} tensors: {', '.join(ops)} -> {chosen} (the fused kernels take {fused})"
                for chosen, ops in others.items()]
    return out


def main() -> int:
    print("\n".join(lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
