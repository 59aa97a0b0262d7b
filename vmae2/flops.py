"""FLOP / MAC counting for the pretraining model, with the formulas ``FlopCounterMode`` lacks.

``torch.utils.flop_counter.FlopCounterMode`` counts matmul-like ops only (``mm``, ``addmm``, ``bmm``,
``convolution`` and their backwards, the CUDA SDPA kernels). Two gaps matter here, and
:func:`register_flop_formulas` closes both (once, idempotently, in torch's global ``flop_registry``):

* **CPU SDPA.** ``F.scaled_dot_product_attention`` on CPU tensors runs
  ``aten._scaled_dot_product_flash_attention_for_cpu`` (+ ``_backward``), which torch does not count, so an
  ``attn_backend="sdpa"`` model would silently lose all of its attention FLOPs. They are counted with torch's
  own SDPA formulas: forward ``4*B*H*Nq*Nk*D`` (``Q K^T`` and ``P V``), backward 2.5x forward (flash-style
  backward recomputes ``Q K^T``; the ``math`` backend's autograd graph costs 2x forward, so fwd+bwd counts of
  the two backends differ by that recomputation, forward counts are equal).
* **The ``vmae2::`` custom ops** (``token_gather``, ``token_scatter``, ``decoder_input``, ``mask_token_grad``,
  ``running_cell_ids``, ``tube_ids``, ``recon_loss``, ``recon_loss_backward``). They are registered with a
  formula of **0 FLOPs**: the token ops are memory-bound data movement, and the fused loss is elementwise
  (subtract, square, per-patch mean/std, weighted sum: a few FLOPs per target element, about 0.01 % of a
  ViT-B step). 0 is also what ``FlopCounterMode`` charges every elementwise aten op (the official eager MSE
  loss, LayerNorm, softmax, GELU), so the fused and the eager loss are counted alike. Registering them keeps
  them visible in ``by_op`` (as 0) and stops the counter from trying to decompose them.

Counts are FLOPs (a multiply-accumulate = 2 FLOPs); the VideoMAE V2 paper's "FLOPs" are multiply-accumulates,
so compare ``flops / 2`` with the paper (:func:`macs_per_clip` does). Counting works on ``meta`` tensors
(no memory, no compute: ViT-g in well under a second), where SDPA is decomposed into ``bmm`` and counted as
such; on CPU tensors the registered CPU-SDPA formula gives the same forward count.
"""
from __future__ import annotations

import math
import threading
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter as _fc

__all__ = ["register_flop_formulas", "count_flops", "token_counts", "macs_per_clip", "mfu", "model_flops_per_clip",
           "peak_flops", "peak_for", "card_peaks", "PEAK_TFLOPS"]

_LOCK = threading.Lock()
_REGISTERED = False


# -- formulas ------------------------------------------------------------------------------------------------

def _cpu_sdpa_fwd(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return _fc.sdpa_flop_count(query, key, value)


def _cpu_sdpa_bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return _fc.sdpa_backward_flop_count(grad_out, query, key, value)


def _zero(*args, out_shape=None, **kwargs) -> int:
    return 0


def _register(packet, formula) -> bool:
    if packet in _fc.flop_registry:  # torch (or an earlier call) already counts it: keep that formula
        return False
    _fc.register_flop_formula([packet])(formula)
    return True


def register_flop_formulas() -> list[str]:
    """Register the CPU-SDPA and ``vmae2::`` op formulas in torch's ``flop_registry`` (once; thread-safe).

    Returns the names registered by this call (empty when already done). Must run before a
    ``FlopCounterMode`` is constructed: the mode copies the registry at construction. :func:`count_flops`
    calls it for you.
    """
    global _REGISTERED
    with _LOCK:
        if _REGISTERED:
            return []
        import vmae2_kernels.ops  # noqa: F401  (defines torch.ops.vmae2.*)

        done = []
        aten = torch.ops.aten
        for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_fwd),
                              ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_bwd)):
            if hasattr(aten, name) and _register(getattr(aten, name), formula):
                done.append(f"aten.{name}")
        for name in vmae2_kernels.ops.OPS:
            if _register(getattr(torch.ops.vmae2, name), _zero):
                done.append(f"vmae2.{name}")
        _REGISTERED = True
        return done


# -- counting -----------------------------------------------------------------------------------------------

def _snapshot(counter: _fc.FlopCounterMode) -> dict[str, dict[str, int]]:
    return {mod: {str(op): int(n) for op, n in ops.items()} for mod, ops in counter.get_flop_counts().items()}


def _by_op(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    return dict(sorted(counts.get("Global", {}).items(), key=lambda kv: -kv[1]))


def _by_module(counts: dict[str, dict[str, int]], root: str) -> dict[str, int]:
    """``{module name as in named_modules() ("" = the model): FLOPs}``, the model's own modules only."""
    out = {}
    for mod, ops in counts.items():
        if mod == root:
            name = ""
        elif mod.startswith(root + "."):
            name = mod[len(root) + 1:]
        else:  # "Global", or backward-pass tags that name no module of the model
            continue
        out[name] = out.get(name, 0) + sum(ops.values())
    return out


def _minus(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    keys = list(a) + [k for k in b if k not in a]
    return {k: a.get(k, 0) - b.get(k, 0) for k in keys}


def count_flops(model: nn.Module, video: torch.Tensor, enc_ids: torch.Tensor, dec_ids: torch.Tensor | None, *,
                backward: bool = False) -> dict[str, Any]:
    """FLOPs of one ``model(video, enc_ids, dec_ids)`` call (and of the loss backward with ``backward=True``).

    Args:
        model: a :class:`~vmae2.models.PretrainVisionTransformer` (real or ``meta`` parameters).
        video: ``[B, 3, T, H, W]`` on the model's device (``meta`` is fine: nothing is computed).
        enc_ids: encoder-visible ids ``[B, Nv]`` (a bool mask also works on real tensors, not on ``meta``).
        dec_ids: decoder-visible ids ``[B, Nd]``, or ``None`` for VideoMAE v1 (decode every masked token).
        backward: also run the official loss (:func:`vmae2.loss.reconstruction_loss`, the fused op, counted
            as 0) and ``backward()`` through it. Gradients are left in the parameters' ``.grad``.
    Returns a dict:
        ``total_flops`` (forward + backward), ``forward_flops``, ``backward_flops`` (loss + backward; 0
        without ``backward``),
        ``forward_macs`` (``forward_flops / 2``, the unit of the paper's "FLOPs"), ``batch``;
        ``by_op`` / ``forward_by_op`` / ``backward_by_op``: ``{"aten.addmm": flops, ...}`` largest first
        (the ``vmae2.*`` ops appear with 0); ``by_module`` / ``forward_by_module``: ``{name: flops}`` with
        names as in ``model.named_modules()`` (``""`` = the whole model; every FLOP of a module is also
        counted in each of its parents). Backward FLOPs are attributed to modules only as far as torch's
        ``ModuleTracker`` manages; ``by_op`` is always complete.
    """
    register_flop_formulas()
    root = type(model).__name__
    counter = _fc.FlopCounterMode(display=False)
    with counter:
        if backward:
            pred = model(video, enc_ids, dec_ids)
            fwd = _snapshot(counter)
            from vmae2.loss import reconstruction_loss

            loss = reconstruction_loss(pred, video, enc_ids, dec_ids, patch_size=model.patch_size,
                                       tubelet_size=model.tubelet_size)
            loss.backward()
        else:
            with torch.no_grad():
                model(video, enc_ids, dec_ids)
            fwd = _snapshot(counter)
    total = _snapshot(counter)
    by_op, fwd_by_op = _by_op(total), _by_op(fwd)
    forward = sum(fwd_by_op.values())
    everything = sum(by_op.values())
    return {
        "total_flops": everything,
        "forward_flops": forward,
        "backward_flops": everything - forward,
        "forward_macs": forward / 2,
        "batch": int(video.shape[0]),
        "by_op": by_op,
        "forward_by_op": fwd_by_op,
        "backward_by_op": {k: v for k, v in _minus(by_op, fwd_by_op).items() if v or k not in fwd_by_op},
        "by_module": _by_module(total, root),
        "forward_by_module": _by_module(fwd, root),
    }


def token_counts(grid: tuple[int, int, int], mask_ratio: float = 0.9, decoder_mask_ratio: float | None = 0.5,
                 decoder_mask_type: str = "run_cell") -> tuple[int, int]:
    """``(encoder-visible, decoder-visible)`` tokens per clip for tube masking at ``mask_ratio`` and the
    decoder mask ``decoder_mask_type`` at ``decoder_mask_ratio`` (``None`` = v1: every encoder-masked token).

    ViT-B 16x224 (grid 8x14x14): ``(160, 784)``; with ``None``: ``(160, 1408)``.
    """
    from vmae2.masking import DECODER_MASK_TYPES, running_cell_num_kept

    t, h, w = grid
    n = t * h * w
    num_visible = t * (h * w - int(mask_ratio * h * w))  # official TubeMaskingGenerator
    if decoder_mask_ratio is None:
        return num_visible, n - num_visible
    if decoder_mask_type == "run_cell":
        return num_visible, running_cell_num_kept(grid, decoder_mask_ratio)
    if decoder_mask_type == "frame":
        return num_visible, (t - int(decoder_mask_ratio * t)) * h * w
    if decoder_mask_type == "random":
        return num_visible, n - int(decoder_mask_ratio * n)
    raise ValueError(f"decoder mask type {decoder_mask_type!r} is unknown; choose one of {DECODER_MASK_TYPES}")


def macs_per_clip(model_name: str, mask_ratio: float = 0.9, decoder_mask_ratio: float | None = 0.5, *,
                  decoder_mask_type: str = "run_cell", **model_overrides) -> float:
    """Forward GMACs (``FLOPs / 2 / 1e9``) per clip of ``model_name``, the unit of the paper's "FLOPs" column.

    The model is built on the ``meta`` device (no memory, no compute; ViT-g takes well under a second).
    ``decoder_mask_ratio=None`` is VideoMAE v1 (no decoder masking). ``model_overrides`` go to
    :func:`vmae2.models.create_model` (e.g. ``num_frames``, ``decoder_depth``).
    Paper (ViT-B, tube 0.9): 35.48 G without decoder masking, 25.87 G with running cell 0.5.
    """
    from vmae2.models import create_model

    with torch.device("meta"):
        model = create_model(model_name, **model_overrides).to("meta")  # the position tables too (a meta build
        pe = model.encoder.patch_embed                                    # keeps them on the CPU)
        nv, nd = token_counts(model.grid, mask_ratio, decoder_mask_ratio, decoder_mask_type)
        video = torch.empty(1, 3, pe.num_frames, pe.img_size, pe.img_size)
        enc_ids = torch.empty(1, nv, dtype=torch.int64)
        dec_ids = None if decoder_mask_ratio is None else torch.empty(1, nd, dtype=torch.int64)
    return count_flops(model, video, enc_ids, dec_ids)["forward_macs"] / 1e9


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation of one device: ``flops / seconds / peak`` (a fraction, 1.0 = peak).

    ``flops`` in FLOPs (2 per MAC) done by that device in ``seconds``; ``peak`` in FLOP/s of that device at the
    run's precision (:func:`peak_flops`; dense, no sparsity). ``None`` when ``peak`` is ``None`` (no known peak).
    """
    if peak is None:
        return None
    for name, value in (("flops", flops), ("seconds", seconds), ("peak", peak)):
        if not (isinstance(value, (int, float)) and math.isfinite(value)) or value < 0 or \
                (value == 0 and name != "flops"):
            raise ValueError(f"mfu: {name} must be a finite positive number, got {value!r}")
    return flops / seconds / peak


def model_flops_per_clip(model, num_visible: int, num_decoded: int) -> float:
    """Training FLOPs of one clip for MFU, in closed form (cheap enough for every logging step): 3x the forward
    matmul FLOPs (2 per MAC), the usual convention. :func:`count_flops` counts exactly; its forward matches this
    forward to the MAC (tests/test_flops.py)."""
    cfg = model.cfg

    def blocks(depth, dim, hidden, tokens):
        return depth * (2 * tokens * (4 * dim * dim + 2 * dim * hidden) + 4 * tokens * tokens * dim)

    n_dec = num_visible + num_decoded
    enc = blocks(cfg.depth, cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio), num_visible)
    d, h = cfg.decoder_embed_dim, int(cfg.decoder_embed_dim * cfg.mlp_ratio)
    dec = blocks(len(model.decoder.blocks), d, h, n_dec)
    if model.decoder.rows == "predicted" and len(model.decoder.blocks):  # the last block skips the visible rows:
        dec -= 2 * num_visible * (2 * n_dec * d + d * d + 2 * d * h)  # their attention rows, projection and MLP
    embedded = num_visible if model.encoder.embed_tokens == "visible" else model.num_patches
    embed = 2 * embedded * cfg.embed_dim * 3 * model.tubelet_size * cfg.patch_size ** 2
    e2d = 2 * num_visible * cfg.embed_dim * cfg.decoder_embed_dim
    head = 2 * num_decoded * cfg.decoder_embed_dim * model.decoder.head.out_features
    return 3.0 * (enc + dec + embed + e2d + head)


# Dense (no sparsity: half the datasheets' sparse figures) peaks in TFLOP/s by device-name pattern, the most specific
# first: bf16/fp16 and TF32 on the tensor cores, plain fp32 on the CUDA cores.
PEAK_TFLOPS = (
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    ("H200 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    ("GH200", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0}),
    ("H200", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0}),  # SXM
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
)
PRECISIONS = ("bf16", "fp16", "fp32")


def card_peaks(device_name: str) -> tuple[str, dict[str, float]] | None:
    """``(matched pattern, {precision: dense TFLOP/s})`` of the GPU called ``device_name`` (case-insensitive), or
    None for a card :data:`PEAK_TFLOPS` does not list."""
    return next(((pattern, peaks) for pattern, peaks in PEAK_TFLOPS if pattern.lower() in device_name.lower()), None)


def peak_for(device_name: str, precision: str, tf32: bool = False) -> float | None:
    """The dense peak in FLOP/s of the GPU called ``device_name`` for a ``precision`` run (None: not a card this
    table lists). ``fp32`` runs: the TF32 tensor-core peak when ``tf32`` (matmuls allowed in TF32), else plain fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is unknown; choose one of {PRECISIONS}")
    found = card_peaks(device_name)
    return None if found is None else found[1]["tf32" if precision == "fp32" and tf32 else precision] * 1e12


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The dense peak of ``device`` in FLOP/s for a ``precision`` run (``bf16``, ``fp16`` or ``fp32``; fp32 reads
    ``torch.backends.cuda.matmul.allow_tf32``). None: not a GPU :data:`PEAK_TFLOPS` knows."""
    if device.type != "cuda":
        return None
    return peak_for(torch.cuda.get_device_name(device), precision, torch.backends.cuda.matmul.allow_tf32)
