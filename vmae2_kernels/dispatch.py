"""Backend choice for the token ops, with the reason every refused backend was refused.

Backends: ``triton`` (fused kernels; CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``),
``cuda`` / ``cpp`` (the native extension built from ``csrc/``), ``torch`` (the plain reference, always runs).
``auto`` runs the fastest usable backend, timed once per op and shape by :mod:`vmae2_kernels.measure` (in
:mod:`vmae2_kernels.ops`, where the arguments are); where nothing is measured, the fixed order: for CUDA tensors
triton -> cuda -> torch, for CPU tensors cpp -> torch (the interpreter is for testing, not speed: never ``auto``
on a CPU). ``VMAE2_BACKEND=<name>`` replaces ``auto`` for the tensors that backend serves (``triton``: CUDA, and CPU
under the interpreter; ``cuda``: CUDA; ``cpp``: CPU; ``torch``: all), so a GPU-only override leaves the CPU work of
the same program (mask ids, planning) on ``auto``, and a CPU-only one the GPU work. Forcing a backend, by
``backend=`` or by the override on a device it serves, that cannot run raises ``RuntimeError`` with every reason.
"""
from __future__ import annotations

import functools
import os

from vmae2_kernels import optional

BACKENDS = ("triton", "cuda", "cpp", "torch")
ENV_VAR = "VMAE2_BACKEND"
AUTO_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpp", "torch")}


def triton_status() -> tuple[object, str | None]:
    """``(vmae2_kernels.triton_ops module, None)`` or ``(None, reason)``; tried once."""
    module, reason = optional.load("triton")
    return (None, reason) if module is None else optional.load("vmae2_kernels.triton_ops")


def native_status() -> tuple[object, str | None]:
    """``(native extension module, None)`` or ``(None, reason)``; tried once."""
    module, reason = optional.load("vmae2_kernels.native")
    return module, reason and f"the native extension (csrc/) is unavailable: {reason}"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


FUSED_DTYPES = ("float32", "bfloat16", "float16")


def not_supported_reasons(backend: str, op: str, device_type: str, dtype=None) -> list[str]:
    """Why ``backend`` cannot run ``op`` on ``device_type`` tensors of ``dtype`` (empty = it can)."""
    device_reason = not_served_reason(backend, device_type)
    reasons = []
    name = str(dtype).replace("torch.", "") if dtype is not None else None
    if backend != "torch" and name is not None and name not in FUSED_DTYPES:
        reasons.append(f"dtype {name} is not supported (fused kernels take {', '.join(FUSED_DTYPES)})")
    if device_reason:
        reasons.append(device_reason)
    if backend == "triton":
        module, reason = triton_status()
        if reason:
            reasons.append(reason)
        elif not hasattr(module, op):
            reasons.append(f"no Triton kernel for {op}")
    elif backend in ("cuda", "cpp"):
        want = "cuda" if backend == "cuda" else "cpu"
        module, reason = native_status()
        if reason:
            reasons.append(reason)
        elif (op, want) not in module.KERNELS:
            skipped = getattr(module, "BUILD_INFO", {}).get("cuda_skipped") if want == "cuda" else None
            why = f"built without CUDA: {skipped}" if skipped else f"built before the op existed; {module.REBUILD}"
            reasons.append(f"the native extension has no {want} kernel for {op} ({why})")
        elif want == "cuda" and device_type == "cuda" and module.arch_reason():
            reasons.append(module.arch_reason())
    return reasons


def not_served_reason(backend: str, device_type: str) -> str | None:
    """Why ``backend`` never runs ``device_type`` tensors, whatever is built (None: it serves them)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; choose one of {BACKENDS} or 'auto'")
    if backend == "triton":
        if device_type == "cpu" and not interpreting():
            return "CPU tensors run Triton kernels only under TRITON_INTERPRET=1 (the interpreter)"
        if device_type not in ("cpu", "cuda"):
            return f"device {device_type} is not supported"
    elif backend in ("cuda", "cpp"):
        want = "cuda" if backend == "cuda" else "cpu"
        if device_type != want:
            return f"the {backend} backend runs {want} tensors, not {device_type}"
    return None


def requested(backend: str, device_type: str) -> str:
    """``backend``; for ``auto`` the ``VMAE2_BACKEND`` override where that backend serves ``device_type`` tensors,
    else ``auto``."""
    forced = os.environ.get(ENV_VAR) or "auto"
    if backend != "auto" or forced == "auto":
        return backend
    if forced not in BACKENDS:
        raise ValueError(f"unknown kernel backend {forced!r} in {ENV_VAR}; set one of {BACKENDS} or 'auto', "
                         "or unset it")
    return "auto" if not_served_reason(forced, device_type) else forced


def choose(op: str, device_type: str, backend: str = "auto", dtype=None) -> str:
    """The backend the fixed order gives ``op`` on ``device_type`` tensors of ``dtype`` (see the module docstring)."""
    return _choose(op, device_type, requested(backend, device_type), interpreting(), dtype)


def usable(op: str, device_type: str, dtype=None) -> tuple[str, ...]:
    """The backends ``auto`` may time for ``op``, in the fixed order (``torch`` always among them)."""
    return _usable(op, device_type, interpreting(), dtype)


@functools.lru_cache(maxsize=None)
def _usable(op: str, device_type: str, interpret: bool, dtype) -> tuple[str, ...]:
    order = AUTO_ORDER.get(device_type, ("torch",))
    return tuple(b for b in order if not not_supported_reasons(b, op, device_type, dtype))


@functools.lru_cache(maxsize=None)
def _choose(op: str, device_type: str, requested: str, interpret: bool, dtype) -> str:
    if requested != "auto":
        reasons = not_supported_reasons(requested, op, device_type, dtype)
        if reasons:
            raise RuntimeError(f"kernel backend {requested!r} cannot run {op} on {device_type} tensors: "
                               + "; ".join(reasons))
        return requested
    for name in AUTO_ORDER.get(device_type, ("torch",)):
        if not not_supported_reasons(name, op, device_type, dtype):
            return name
    return "torch"


def report(op: str, device_type: str) -> dict[str, list[str]]:
    """``{backend: reasons}`` for every backend (an empty list means usable)."""
    return {b: not_supported_reasons(b, op, device_type) for b in BACKENDS}


def reset() -> None:
    """Forget cached imports and choices (tests, or after building the extension in-process)."""
    optional.load.cache_clear()
    _choose.cache_clear()
    _usable.cache_clear()
