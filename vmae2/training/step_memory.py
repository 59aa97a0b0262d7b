"""The memory of one pretraining step, counted exactly on fake tensors: nothing is allocated, nothing is computed.

:func:`simulate_step` runs the model's forward, the fused loss and backward under ``FakeTensorMode`` at the real
shapes and follows every storage an op creates until it is freed (one weak reference per storage), so tensors live
and die as in a real step: autograd's saved tensors, checkpointing's recomputation, gradients as they accumulate.
It reports the peak of the live bytes and what was live then, what the forward leaves saved for backward, by the
module that saved it (saved-tensor hooks), and the step's FLOPs (torch's FLOP formulas with :mod:`vmae2.flops`'
additions), recomputation included. On a CPU it reproduces the allocator's bytes (``tests/test_plan.py``).

A CUDA step differs from a CPU one in two ways, both reproduced by :class:`CudaSemantics` (a ``TorchFunctionMode``
over fake CPU tensors; fake CUDA tensors cannot run autograd in a CPU build of torch):

* **autocast.** CPU autocast has another policy than CUDA's (its ``layer_norm`` returns bf16, CUDA's fp32), so the
  mode applies CUDA's policy (PyTorch's autocast op reference) to the ops a VideoMAE step calls: :data:`LOWER`
  (matmuls, convolutions, attention) run in bf16/fp16, :data:`FP32` (layer norm, softmax, reductions) in fp32,
  :data:`PROMOTE` (``cat``, ``stack``) in the widest input type; other ops keep their inputs' dtypes (GELU, adds,
  the ``vmae2::`` ops, as under autocast). Parameter casts are cached for the whole step as autocast caches them: the
  engine's autocast region spans forward and backward, so the bf16 weight copies live until the step ends.
* **attention.** ``scaled_dot_product_attention`` becomes :class:`FlashAttention`, which keeps what FlashAttention-2
  keeps (q, k, v, the output and the fp32 log-sum-exp ``[B, H, L]``; the same set for torch's flash, cuDNN and
  memory-efficient SDPA kernels and flash-attn's packed call) and allocates its backward workspace (dq, dk, dv, the
  fp32 dq accumulator ``[B, L_128, H, D_32]`` and ``softmax_d [B, H, L_128]``: L rounded up to a multiple of
  128, D to 32, as FlashAttention-2 does for head dims up to 128).

Not counted (outside the simulation): kernels' internal scratch that is not an op's output (cuBLAS/cuDNN
workspaces, a CPU convolution's im2col columns), the caching allocator's rounding and fragmentation.
"""
from __future__ import annotations

import contextlib
import weakref
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.flop_counter import flop_registry

from vmae2.flops import register_flop_formulas
from vmae2.loss import reconstruction_loss

# CUDA autocast's lists (torch.amp autocast op reference), for the functions a VideoMAE training step calls.
LOWER = {F.linear, F.conv1d, F.conv2d, F.conv3d, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__,
         torch.mm, torch.bmm, torch.addmm, torch.baddbmm, F.scaled_dot_product_attention}
FP32 = {F.layer_norm, torch.layer_norm, F.softmax, torch.softmax, torch.Tensor.softmax, F.log_softmax,
        torch.log_softmax, torch.Tensor.log_softmax, F.mse_loss, torch.sum, torch.Tensor.sum, torch.exp}
PROMOTE = {torch.cat, torch.stack}
KINDS = ("activations", "weight copies", "gradients", "backward")  # what a live byte is, see StepMemory


@dataclass
class StepMemory:
    """One simulated step. Bytes count only storages the step creates (not the parameters, existing gradients or the
    inputs). ``at_peak`` splits ``peak`` into :data:`KINDS`: ``activations`` (made in the forward or the loss and
    still alive), ``weight copies`` (autocast's low-precision parameter copies), ``gradients`` (parameters'
    ``.grad``), ``backward`` (everything else backward made: activation gradients, recomputed activations,
    attention workspace). ``saved`` is what the forward left alive at its end (before backward), by module label:
    ``encoder.3.attn`` (saved by block 3's attention: the normalised input, q/k/v, output, log-sum-exp),
    ``.mlp``, ``.norm`` (LayerNorm inputs and statistics), ``.kept`` (the block's output, where no op of the next
    block saves it: a checkpointed region's input, or the final norm's), ``other`` (patch embedding, token ops,
    encoder-to-decoder, decoder head), ``loss`` (what the fused loss keeps: the prediction, its weights)."""

    peak: int
    at_peak: dict[str, int]
    saved: dict[str, int]
    flops: int

    @property
    def saved_bytes(self) -> int:
        return sum(self.saved.values())


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


class _Tracker(TorchDispatchMode):
    """Live bytes of the storages ops create, by kind and by creating module (``label``), their peak, and the FLOPs
    of the ops (torch's ``flop_registry``; not ``FlopCounterMode``, whose module tracker keeps recomputed tensors
    alive)."""

    def __init__(self, params: set[int]):
        super().__init__()
        self.params = params
        self.live: dict[int, list] = {}  # storage key -> [kind, creator label, bytes]
        self.totals: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.total = self.peak = 0
        self.at_peak = dict(self.totals)
        self.label, self.forward = "other", True
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func._overloadpacket in flop_registry:  # FlopCounterMode's formulas (its module tracker would keep
            self.flops += flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)  # recomputed tensors)
        inputs = {_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and (key := _key(t)) not in inputs and key not in self.live:
                if func is torch.ops.aten._to_copy.default and inputs & self.params:
                    kind = "weight copies"
                else:
                    kind = "activations" if self.forward else "backward"
                storage = t.untyped_storage()
                self.live[key] = [kind, self.label, storage.nbytes()]
                self._move(kind, storage.nbytes())
                weakref.finalize(storage, self._free, key)
        if self.total > self.peak:
            self.peak, self.at_peak = self.total, dict(self.totals)
        return out

    def _move(self, kind: str, nbytes: int) -> None:
        self.totals[kind] += nbytes
        self.total += nbytes

    def _free(self, key: int) -> None:
        kind, _, nbytes = self.live.pop(key)
        self._move(kind, -nbytes)

    def retag(self, t: torch.Tensor, kind: str) -> None:
        entry = self.live.get(_key(t))
        if entry is not None and entry[0] != kind:
            self.totals[entry[0]] -= entry[2]
            self.totals[kind] += entry[2]
            entry[0] = kind


@contextlib.contextmanager
def _labels(model: nn.Module, tracker: _Tracker):
    """Name the module running each op: ``{stack}.{i}.{norm|attn|mlp}`` inside a block's LayerNorms, attention and
    MLP, ``{stack}.{i}.kept`` in the block itself (residual adds), ``other`` elsewhere in the model."""
    names = {}
    for stack in ("encoder", "decoder"):
        for i, blk in enumerate(getattr(model, stack).blocks):
            names[blk] = f"{stack}.{i}.kept"
            for part, mods in (("norm", (blk.norm1, blk.norm2)), ("attn", (blk.attn,)), ("mlp", (blk.mlp,))):
                names.update({m: f"{stack}.{i}.{part}" for m in mods})
    stack: list[str] = []

    def enter(module, args):
        stack.append(tracker.label)
        tracker.label = names[module]

    def leave(module, args, out):
        tracker.label = stack.pop()

    handles = [h for m in names for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class FlashAttention(torch.autograd.Function):
    """Attention with FlashAttention-2's memory: saves q, k, v, the output and the fp32 log-sum-exp; backward
    allocates dq, dk, dv and FA2's fp32 workspace. Shapes (and FLOPs, counted by :mod:`vmae2.flops`) come from
    torch's CPU flash-attention op on the fake tensors: ``q, k, v [B, H, L, D] -> [B, H, L, D]``."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        B, H, L, D = q.shape
        rows = -(-L // 128) * 128
        workspace = (q.new_empty(B, rows, H, -(-D // 32) * 32, dtype=torch.float32),  # dq accumulator
                     q.new_empty(B, H, rows, dtype=torch.float32))  # softmax_d
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad, q, k, v, out, lse, 0.0, False, scale=ctx.scale)
        del workspace  # freed when the kernel returns, after dq, dk, dv exist
        return dq, dk, dv, None


class CudaSemantics(TorchFunctionMode):
    """What a CUDA step does differently, on CPU tensors: CUDA autocast's policy in ``dtype`` (``None``: fp32, no
    autocast) and :class:`FlashAttention` for ``scaled_dot_product_attention`` (see the module docstring)."""

    def __init__(self, dtype: torch.dtype | None):
        super().__init__()
        self.dtype = dtype
        self.cache: dict[int, torch.Tensor] = {}  # autocast's cache of parameter casts, for the whole step

    def _cast(self, t, dtype: torch.dtype):
        if not (isinstance(t, torch.Tensor) and t.is_floating_point()) or t.dtype in (dtype, torch.float64):
            return t
        if not (t.is_leaf and t.requires_grad):
            return t.to(dtype)
        if id(t) not in self.cache:
            self.cache[id(t)] = t.to(dtype)
        return self.cache[id(t)]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dtype = None
        if self.dtype is not None and func in LOWER:
            dtype = self.dtype
        elif self.dtype is not None and func in FP32:
            dtype = torch.float32
        elif self.dtype is not None and func in PROMOTE:
            dtype = _widest(tree_leaves(args))
        if dtype is not None:
            args, kwargs = tree_map(lambda a: self._cast(a, dtype), (args, kwargs))
        if func is F.scaled_dot_product_attention:
            q, k, v, *rest = args
            if rest or set(kwargs) - {"scale"}:
                raise NotImplementedError("the FlashAttention stand-in covers attention without mask or dropout")
            return FlashAttention.apply(q, k, v, kwargs.get("scale", q.shape[-1] ** -0.5))
        return func(*args, **kwargs)


def _widest(leaves) -> torch.dtype | None:
    dtypes = [t.dtype for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return max(dtypes, key=lambda d: torch.finfo(d).bits) if dtypes else None


def simulate_step(model: nn.Module, video_shape: tuple[int, ...], num_visible: int, num_decoded: int | None, *,
                  amp_dtype: torch.dtype | None = None, cuda: bool = False, normalize_target: bool = True,
                  grads_allocated: bool = False) -> StepMemory:
    """Simulate one training step of the pretraining ``model`` (built on the ``meta`` device; it becomes fake here).

    Args:
        video_shape: ``(clips, 3, T, H, W)`` of the batch; ids are ``[clips, num_visible]`` and ``[clips,
            num_decoded]`` (``None``: VideoMAE v1, every encoder-masked token decoded).
        amp_dtype: autocast dtype (``None``: fp32). ``cuda``: a CUDA step (:class:`CudaSemantics`); else a CPU step
            (CPU autocast, the model's own CPU attention).
        grads_allocated: the parameters already hold gradients (accumulation adds in place), as after a first
            micro-batch; by default they are ``None``, as after the engine's ``zero_grad(set_to_none=True)``.
    """
    register_flop_formulas()
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.to_empty(device="cpu")
        params = list(model.parameters())
        clips = video_shape[0]
        video = torch.empty(video_shape)
        enc = torch.empty(clips, num_visible, dtype=torch.int64)
        dec = None if num_decoded is None else torch.empty(clips, num_decoded, dtype=torch.int64)
        for p in params:
            p.grad = torch.empty_like(p) if grads_allocated else None
        tracker = _Tracker({_key(p) for p in params})
        hooks = [p.register_post_accumulate_grad_hook(lambda p: tracker.retag(p.grad, "gradients")) for p in params]
        savers: dict[int, str] = {}

        def pack(t):
            savers.setdefault(_key(t), tracker.label)
            return t

        if cuda:
            semantics = CudaSemantics(amp_dtype)
        else:
            semantics = torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype is not None)
        with tracker, semantics, _labels(model, tracker):
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                pred = model(video, enc, dec)
                tracker.label = "loss"
                loss = reconstruction_loss(pred, video, enc, dec, patch_size=model.patch_size,
                                           tubelet_size=model.tubelet_size, normalize_target=normalize_target)
                del pred
            saved: dict[str, int] = defaultdict(int)
            for key, (kind, creator, nbytes) in tracker.live.items():
                if kind == "activations":  # a block output saved outside the blocks (checkpointing's input saver,
                    saver = savers.get(key, "other")  # the final norm) is what that block keeps
                    saved[creator if creator.endswith(".kept") and saver == "other" else saver] += nbytes
            tracker.forward = False
            # Through the loss's gradient edge: ``loss.backward()`` is a torch function, and a function mode is off
            # inside the calls it handles, so checkpointing would recompute without CudaSemantics.
            torch.autograd.backward(torch.autograd.graph.get_gradient_edge(loss), torch.ones_like(loss))
            del loss
        for h in hooks:
            h.remove()
    return StepMemory(tracker.peak, tracker.at_peak, dict(saved), tracker.flops)
