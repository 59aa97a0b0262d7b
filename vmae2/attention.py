"""Attention backends with an explained choice.

Every backend takes packed ``qkv [B, N, 3, heads, head_dim]`` and returns ``[B, N, heads, head_dim]``.
Priority for ``backend="auto"``: FlashAttention (flash-attn, packed qkv) -> xformers
memory-efficient attention -> PyTorch SDPA -> ``math`` (the official explicit softmax, bit-faithful).

flash-attn and xformers are imported lazily: their absence is a reason, never an ImportError.
``VMAE2_ATTENTION=<name>`` forces a backend for every ``auto`` module; forcing one that cannot run
raises with the reasons.
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import torch
import torch.nn.functional as F

from vmae2_kernels import optional

PRIORITY = ("flash", "xformers", "sdpa", "math")
ENV_VAR = "VMAE2_ATTENTION"


def _math(qkv: torch.Tensor, scale: float) -> torch.Tensor:
    """The official numerics: q pre-scaled, explicit ``softmax(q k^T) v`` (materialises N x N)."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, head_dim]
    attn = (q * scale) @ k.transpose(-2, -1)
    return (attn.softmax(dim=-1) @ v).transpose(1, 2)


def _sdpa(qkv: torch.Tensor, scale: float) -> torch.Tensor:
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2)


def _flash(qkv: torch.Tensor, scale: float) -> torch.Tensor:
    fn = _load("flash").flash_attn_qkvpacked_func
    return fn(qkv, dropout_p=0.0, softmax_scale=scale)


def _xformers(qkv: torch.Tensor, scale: float) -> torch.Tensor:
    q, k, v = qkv.unbind(2)  # each [B, N, heads, head_dim], the xformers layout
    return _load("xformers").memory_efficient_attention(q, k, v, p=0.0, scale=scale)


_MODULES = {"flash": "flash_attn", "xformers": "xformers.ops"}
_KERNELS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "flash": _flash, "xformers": _xformers, "sdpa": _sdpa, "math": _math}


def _import(name: str):
    """Return ``(module, None)`` or ``(None, reason)``; each import is tried once (a broken install, e.g. a
    missing .so, is as unusable as a missing one)."""
    return optional.load(_MODULES[name])


def _load(name: str):
    module, reason = _import(name)
    if module is None:
        raise RuntimeError(reason)
    return module


# Capabilities, xformers-style: each refusal becomes a sentence.
CUDA_ONLY = {"flash": {"cuda"}, "xformers": {"cuda"}}
HALF_ONLY = {"flash": (torch.float16, torch.bfloat16)}
MIN_CAPABILITY = {"flash": (8, 0)}
MAX_HEAD_DIM = {"flash": 256}


def not_supported_reasons(backend: str, device: torch.device | str, dtype: torch.dtype, head_dim: int) -> list[str]:
    """Why ``backend`` cannot run attention on ``device``/``dtype``/``head_dim`` (empty list = it can)."""
    if backend not in _KERNELS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {PRIORITY} or 'auto'")
    device = torch.device(device)
    reasons = []
    if backend in CUDA_ONLY and device.type not in CUDA_ONLY[backend]:
        reasons.append(f"device {device.type} is not supported (needs {sorted(CUDA_ONLY[backend])})")
    if backend in HALF_ONLY and dtype not in HALF_ONLY[backend]:
        reasons.append(f"dtype {dtype} is not supported (needs float16 or bfloat16; run under autocast)")
    if backend in MAX_HEAD_DIM and (head_dim % 8 or head_dim > MAX_HEAD_DIM[backend]):
        reasons.append(f"head_dim {head_dim} is not supported (needs a multiple of 8, at most {MAX_HEAD_DIM[backend]})")
    if backend in MIN_CAPABILITY and device.type == "cuda" and torch.cuda.is_available():
        cap = torch.cuda.get_device_capability(device)
        if cap < MIN_CAPABILITY[backend]:
            reasons.append(f"GPU compute capability {cap} is below {MIN_CAPABILITY[backend]}")
    if backend in _MODULES and not reasons:
        _, reason = _import(backend)
        if reason:
            reasons.append(reason)
    return reasons


@torch.compiler.assume_constant_result  # under torch.compile: decided once at trace time, no graph break
def select_backend(device: torch.device | str, dtype: torch.dtype, head_dim: int, requested: str = "auto") -> str:
    """Resolve ``requested`` (a backend name or ``auto``) to the backend that will run.

    ``auto`` honours ``VMAE2_ATTENTION`` and then takes the first usable backend of :data:`PRIORITY`.
    A forced backend that cannot run raises ``RuntimeError`` with every reason.
    """
    if requested == "auto":
        requested = os.environ.get(ENV_VAR, "auto") or "auto"
    return _select(torch.device(device).type, dtype, head_dim, requested)


@functools.lru_cache(maxsize=256)
def _select(device_type: str, dtype: torch.dtype, head_dim: int, requested: str) -> str:
    if requested != "auto":
        reasons = not_supported_reasons(requested, device_type, dtype, head_dim)
        if reasons:
            raise RuntimeError(f"attention backend {requested!r} cannot run on {device_type}/{dtype}/"
                               f"head_dim {head_dim}: " + "; ".join(reasons))
        return requested
    for name in PRIORITY:
        if not not_supported_reasons(name, device_type, dtype, head_dim):
            return name
    raise AssertionError("the math backend always runs")  # pragma: no cover


def reset() -> None:
    """Forget cached imports and choices (after installing flash-attn/xformers in-process, or in tests)."""
    optional.load.cache_clear()
    _select.cache_clear()


def attention(qkv: torch.Tensor, scale: float, backend: str = "auto") -> torch.Tensor:
    """Self-attention over packed ``qkv [B, N, 3, heads, head_dim]`` -> ``[B, N, heads, head_dim]``."""
    name = select_backend(qkv.device, qkv.dtype, qkv.shape[-1], backend)
    return _KERNELS[name](qkv, scale)


class AttentionModule(torch.nn.Module):
    """Base of the attention layers this module serves: each has ``head_dim`` and a ``backend`` name (``auto`` or
    one of :data:`PRIORITY`) that :func:`explain` and :func:`set_backend` read and write."""

    head_dim: int
    backend: str


def explain(model: torch.nn.Module, device: torch.device | str | None = None,
            dtype: torch.dtype | None = None) -> list[dict]:
    """Which backend each attention group of ``model`` uses and why the others were refused.

    ``dtype`` is the dtype attention runs in (e.g. ``torch.bfloat16`` under autocast); by default the
    model's parameter dtype. One entry per distinct ``(head_dim, requested)`` with the module names.
    """
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    dtype = dtype or param.dtype
    groups: dict[tuple[int, str], list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, AttentionModule):
            groups.setdefault((module.head_dim, module.backend), []).append(name)
    report = []
    for (head_dim, requested), names in groups.items():
        entry = {"modules": names, "head_dim": head_dim, "requested": requested,
                 "device": device.type, "dtype": str(dtype).replace("torch.", "")}
        try:
            entry["backend"] = select_backend(device, dtype, head_dim, requested)
        except RuntimeError as exc:
            entry["backend"], entry["error"] = None, str(exc)
        entry["refused"] = {b: r for b in PRIORITY
                            if (r := not_supported_reasons(b, device, dtype, head_dim))}
        report.append(entry)
    return report


def set_backend(model: torch.nn.Module, backend: str) -> None:
    """Set the attention backend (``auto`` or a name of :data:`PRIORITY`) of every attention module."""
    if backend != "auto" and backend not in _KERNELS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {PRIORITY} or 'auto'")
    for module in model.modules():
        if isinstance(module, AttentionModule):
            module.backend = backend
