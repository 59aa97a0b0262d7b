"""The official pretraining engine around a model (reference section 5): optimizer, gradient norm, one step.

:class:`OfficialStep` follows the official engine: the fp32 normalised targets of **all** N patches built outside
autocast, labels picked with ``[~dec_mask]``, the forward and the loss under ``torch.autocast`` for ``bf16`` /
``fp16`` (activations low precision, target fp32, as the engine's ``torch.cuda.amp.autocast()``); then
``loss.item()`` and a finiteness check (a host sync), ``zero_grad``, backward (through a GradScaler under fp16;
bf16 needs none, the official pretraining only ever ran fp16), the total gradient norm, AdamW with the official two
parameter groups.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn

from .loss import decoded, official_targets, weighted_mse
from .model import OfficialPretrainModel

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_for(device: torch.device, precision: str):
    """``torch.autocast`` for ``precision`` in :data:`PRECISIONS` (a null context for fp32)."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def official_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The official factory's two groups: no decay for 1-D parameters, names ending ``.bias`` / ``.scale`` and the
    names in ``model.no_weight_decay()``; decay for everything else."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim == 1 or name.endswith(".bias") or name.endswith(".scale") or name in skip
        (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def official_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.05, betas=(0.9, 0.95),
                       eps: float = 1e-8) -> torch.optim.AdamW:
    return torch.optim.AdamW(official_param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps,
                             weight_decay=0.0)


def total_grad_norm(parameters) -> torch.Tensor:
    """The engine's gradient norm when no clipping is asked: L2 norm of the per-parameter L2 norms."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    return torch.norm(torch.stack([torch.norm(g.detach(), 2.0) for g in grads]), 2.0)


class OfficialStep:
    """One official-style training step on fixed inputs: ``step()`` (timed) or ``forward_loss()`` (tests).

    ``enc_mask [B, N]`` / ``dec_mask [B, N]`` are bool on the device (True = dropped / not reconstructed), as the
    official engine receives them. ``dec_mask=None`` reconstructs every encoder-masked token (VideoMAE v1).
    """

    def __init__(self, model: OfficialPretrainModel, optimizer: torch.optim.Optimizer, video: torch.Tensor,
                 enc_mask: torch.Tensor, dec_mask: torch.Tensor | None, precision: str = "fp32"):
        self.model, self.optimizer, self.video = model, optimizer, video
        self.enc_mask = enc_mask
        self.dec_mask = ~enc_mask if dec_mask is None else dec_mask  # the engine's v1 convention
        self.precision = precision
        self.scaler = torch.amp.GradScaler(video.device.type) if precision == "fp16" else None
        self.last_grad_norm = None

    def forward_loss(self) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        target = official_targets(self.video, m.patch_size, m.tubelet_size)  # outside autocast: fp32
        labels = decoded(target, self.dec_mask)
        with autocast_for(self.video.device, self.precision):
            outputs = m(self.video, self.enc_mask, self.dec_mask)
            loss = weighted_mse(outputs, labels, self.enc_mask, self.dec_mask)
        return outputs, loss

    def step(self) -> float:
        """One step; returns the loss value (read on the host, as the engine does)."""
        _, loss = self.forward_loss()
        value = loss.item()  # the engine logs every step: a host sync between forward and backward
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value}")
        self.optimizer.zero_grad()
        params = list(self.model.parameters())
        if self.scaler is None:
            loss.backward()
            self.last_grad_norm = total_grad_norm(params)
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            self.last_grad_norm = total_grad_norm(params)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scaler.get_scale()  # the engine logs the loss scale: another sync
        return value
