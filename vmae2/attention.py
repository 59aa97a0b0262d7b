"""Attention backends with an explained choice.

Every backend takes the packed ``qkv [B, N, 3, heads, head_dim]`` and ``num_query`` (None: every token queries;
``Nq``: only the last ``Nq`` tokens do, over all ``N`` keys) and returns ``[B, Nq or N, heads, head_dim]``.
Backends: FlashAttention (flash-attn), xformers memory-efficient attention, PyTorch SDPA, ``explicit`` (the official
explicit softmax computed in place, a hand-written backward) and ``math`` (the official formula, bit-faithful).

``backend="auto"`` runs the fastest usable backend for the call's device, dtype, autocast state and shape, timed
once at that shape (forward, and backward when the call records gradients) by :mod:`vmae2_kernels.measure` and
remembered on disk. Where nothing is measured (``VMAE2_MEASURE=0``, or inside ``torch.compile`` with nothing
remembered) the fixed order of :func:`usable` decides. ``VMAE2_ATTENTION=<name>`` forces a backend for every
``auto`` module; forcing one that cannot run raises with the reasons.

flash-attn and xformers are imported lazily: their absence is a reason, never an ImportError.
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor

from vmae2_kernels import measure, optional

PRIORITY = ("flash", "xformers", "sdpa", "explicit", "math")
# A CPU in bf16/fp16: the explicit softmax before SDPA, whose CPU kernel is the slower there (whole ViT-S/B steps in
# bf16 autocast, benchmarks/README.md); the measured choice still decides shape by shape.
PRIORITY_CPU_HALF = ("flash", "xformers", "explicit", "math", "sdpa")
ENV_VAR = "VMAE2_ATTENTION"


def _split(qkv: torch.Tensor, num_query: int | None, heads_first: bool):
    """``q, k, v`` views of ``qkv``, ``[B, N, heads, hd]`` (or ``[B, heads, N, hd]``); q keeps the last
    ``num_query`` tokens."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0) if heads_first else qkv.unbind(2)
    if num_query is not None:
        q = q[..., -num_query:, :] if heads_first else q[:, -num_query:]
    return q, k, v


def _math(qkv: torch.Tensor, scale: float, num_query: int | None) -> torch.Tensor:
    """The official numerics: q pre-scaled, explicit ``softmax(q k^T) v`` (materialises Nq x N)."""
    q, k, v = _split(qkv, num_query, heads_first=True)  # each [B, heads, N, head_dim]
    attn = (q * scale) @ k.transpose(-2, -1)
    return (attn.softmax(dim=-1) @ v).transpose(1, 2)


class _ExplicitInPlace(torch.autograd.Function):
    """``softmax(scale q k^T) v`` over ``q [BH, Nq, hd]``, ``k, v [BH, N, hd]``: the scores are made (``baddbmm``'s
    alpha is the scale), softmaxed and, in backward, differentiated in one ``[BH, Nq, N]`` buffer each way."""

    @staticmethod
    def forward(ctx, q, k, v, scale: float):
        scores = torch.baddbmm(q.new_empty(()).expand(q.shape[0], q.shape[1], k.shape[1]), q, k.transpose(1, 2),
                               beta=0.0, alpha=scale)
        probs = torch.ops.aten._softmax.out(scores, -1, False, out=scores)
        ctx.save_for_backward(q, k, v, probs)
        ctx.scale = scale
        return torch.bmm(probs, v)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, probs = ctx.saved_tensors
        grad_v = torch.bmm(probs.transpose(1, 2), grad)
        grad_scores = torch.bmm(grad, v.transpose(1, 2))  # d probs, then d scores in place
        torch.ops.aten._softmax_backward_data.out(grad_scores, probs, -1, probs.dtype, grad_input=grad_scores)
        grad_q = torch.bmm(grad_scores, k).mul_(ctx.scale)
        grad_k = torch.bmm(grad_scores.transpose(1, 2), q).mul_(ctx.scale)
        return grad_q, grad_k, grad_v, None


def _explicit(qkv: torch.Tensor, scale: float, num_query: int | None) -> torch.Tensor:
    """The explicit softmax of ``math`` in place: one ``Nq x N`` buffer forward and one backward instead of two each
    (the same products; bit-equal to ``math`` when ``scale`` is a power of two, e.g. head_dim 64). Under autocast the
    whole attention runs in the autocast dtype, as ``math`` does."""
    B, N, _, heads, head_dim = qkv.shape
    q, k, v = _split(qkv, num_query, heads_first=True)
    device_type = qkv.device.type
    dtype = _autocast_dtype(device_type) or qkv.dtype
    q, k, v = (t.to(dtype).reshape(B * heads, -1, head_dim) for t in (q, k, v))
    with torch.autocast(device_type, enabled=False):
        out = _ExplicitInPlace.apply(q, k, v, scale)
    return out.reshape(B, heads, -1, head_dim).transpose(1, 2)


def _sdpa(qkv: torch.Tensor, scale: float, num_query: int | None) -> torch.Tensor:
    q, k, v = _split(qkv, num_query, heads_first=True)
    return F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2)


def _flash(qkv: torch.Tensor, scale: float, num_query: int | None) -> torch.Tensor:
    module = _load("flash")
    if num_query is None:
        return module.flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=scale)
    return module.flash_attn_func(*_split(qkv, num_query, heads_first=False), dropout_p=0.0, softmax_scale=scale)


def _xformers(qkv: torch.Tensor, scale: float, num_query: int | None) -> torch.Tensor:
    q, k, v = _split(qkv, num_query, heads_first=False)  # the xformers layout
    return _load("xformers").memory_efficient_attention(q, k, v, p=0.0, scale=scale)


_MODULES = {"flash": "flash_attn", "xformers": "xformers.ops"}
_KERNELS: dict[str, Callable[[torch.Tensor, float, int | None], torch.Tensor]] = {
    "flash": _flash, "xformers": _xformers, "sdpa": _sdpa, "explicit": _explicit, "math": _math}


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
CPU_ONLY = {"explicit": "its in-place softmax and backward are verified on CPUs only"}
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
    if backend in CPU_ONLY and device.type != "cpu":
        reasons.append(f"device {device.type} is not supported (needs cpu: {CPU_ONLY[backend]})")
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
    """The backend the fixed order gives for ``requested`` (a backend name or ``auto``): ``auto`` honours
    ``VMAE2_ATTENTION`` and then takes the first usable backend (:func:`usable`); :func:`attention` uses it where
    nothing is measured. A forced backend that cannot run raises ``RuntimeError`` with every reason."""
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
    return usable(device_type, dtype, head_dim)[0]


@functools.lru_cache(maxsize=256)
def usable(device_type: str, dtype: torch.dtype, head_dim: int) -> tuple[str, ...]:
    """The backends that can run here, in the fixed order (:data:`PRIORITY`; :data:`PRIORITY_CPU_HALF` for bf16/fp16
    on a CPU); ``math`` always can."""
    half_on_cpu = device_type == "cpu" and dtype in (torch.float16, torch.bfloat16)
    return tuple(b for b in (PRIORITY_CPU_HALF if half_on_cpu else PRIORITY)
                 if not not_supported_reasons(b, device_type, dtype, head_dim))


def measure_key(device_type: str, dtype: torch.dtype, shape: tuple, num_query: int | None, grad: bool,
                autocast: str) -> tuple:
    """The key a measured choice is remembered under (see :mod:`vmae2_kernels.measure`)."""
    B, N, _, heads, head_dim = shape
    return (device_type, str(dtype).replace("torch.", ""), f"B {B} heads {heads} head_dim {head_dim}",
            f"queries {N if num_query is None else num_query} of {N}", f"backward {grad}", f"autocast {autocast}")


@torch.compiler.assume_constant_result  # under torch.compile: decided once at trace time, no graph break
def choose(device_type: str, dtype: torch.dtype, batch: int, tokens: int, heads: int, head_dim: int,
           num_query: int | None, grad: bool, autocast: str) -> str:
    """The fastest usable backend for a call on ``qkv [batch, tokens, 3, heads, head_dim]``, measured at that shape
    once (see the module docstring). Arguments are plain constants, as ``torch.compile`` needs them here."""
    shape = (batch, tokens, 3, heads, head_dim)
    names = usable(device_type, dtype, head_dim)
    measured = measure.fastest("attention", device_type, measure_key(device_type, dtype, shape, num_query, grad,
                                                                     autocast), names,
                               lambda: _timed_calls(names, device_type, dtype, shape, num_query, grad))
    return measured or names[0]


def _timed_calls(names, device_type: str, dtype: torch.dtype, shape: tuple, num_query: int | None, grad: bool):
    """``{backend: call}`` on random inputs of the call's shape: forward, and backward when ``grad``."""
    qkv = torch.randn(shape, device=device_type).to(dtype).requires_grad_(grad)
    scale = shape[-1] ** -0.5

    def call(name):
        def run():
            out = _KERNELS[name](qkv, scale, num_query)
            if grad:
                torch.autograd.grad(out, qkv, torch.ones_like(out))
        return run
    return {name: call(name) for name in names}


def reset() -> None:
    """Forget cached imports and choices (after installing flash-attn/xformers in-process, or in tests)."""
    optional.load.cache_clear()
    _select.cache_clear()
    usable.cache_clear()
    measure.forget()


def attention(qkv: torch.Tensor, scale: float, backend: str = "auto", num_query: int | None = None) -> torch.Tensor:
    """Self-attention over packed ``qkv [B, N, 3, heads, head_dim]`` -> ``[B, N, heads, head_dim]``; with
    ``num_query``, only the last ``num_query`` tokens query (over all ``N`` keys): ``[B, num_query, heads, hd]``."""
    device_type = qkv.device.type
    requested = backend if backend != "auto" else (os.environ.get(ENV_VAR) or "auto")
    if requested != "auto" or not measurable(qkv):
        name = select_backend(device_type, qkv.dtype, qkv.shape[-1], requested)
    else:
        autocast = str(_autocast_dtype(device_type) or "off").replace("torch.", "")
        grad = qkv.requires_grad and torch.is_grad_enabled()
        B, N, _, heads, head_dim = qkv.shape
        name = choose(device_type, qkv.dtype, B, N, heads, head_dim, num_query, grad, autocast)
    return _KERNELS[name](qkv, scale, num_query)


def measurable(t: torch.Tensor) -> bool:
    """Whether a call on ``t`` can be timed: real CPU or CUDA data (not meta, not a fake tensor of a simulation)."""
    return t.device.type in ("cpu", "cuda") and not isinstance(t, FakeTensor)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype in force for ``device_type``, or None."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


class AttentionModule(torch.nn.Module):
    """Base of the attention layers this module serves: each has ``head_dim`` and a ``backend`` name (``auto`` or
    one of :data:`PRIORITY`) that :func:`explain` and :func:`set_backend` read and write."""

    head_dim: int
    backend: str


def explain(model: torch.nn.Module, device: torch.device | str | None = None,
            dtype: torch.dtype | None = None) -> list[dict]:
    """Which backend each attention group of ``model`` uses and why the others were refused.

    ``dtype`` is the dtype attention runs in (e.g. ``torch.bfloat16`` under autocast); by default the
    model's parameter dtype. One entry per distinct ``(head_dim, requested)`` with the module names: ``backend``
    (the fixed order's choice, or the forced one), ``refused`` (reasons per backend) and ``measured`` (for
    ``auto``: each shape timed on this machine, ``{"key", "choice", "ms"}``, where the measured choice runs).
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
        wanted = (device.type, entry["dtype"], f"head_dim {head_dim}")
        remembered = [] if requested != "auto" or measure.turned_off() else measure.choices("attention")
        entry["measured"] = [m for m in remembered if m["key"].startswith(f"{wanted[0]} | {wanted[1]} |")
                             and f"{wanted[2]} |" in m["key"]]
        report.append(entry)
    return report


def set_backend(model: torch.nn.Module, backend: str) -> None:
    """Set the attention backend (``auto`` or a name of :data:`PRIORITY`) of every attention module."""
    if backend != "auto" and backend not in _KERNELS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {PRIORITY} or 'auto'")
    for module in model.modules():
        if isinstance(module, AttentionModule):
            module.backend = backend
