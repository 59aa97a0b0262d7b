"""The optimizer and its schedules: AdamW groups (weight decay, layer-wise lr decay), the official warm-up +
cosine schedule, and one optimizer step (unscale, clip or measure the norm, step, free the gradients)."""
from __future__ import annotations

import numpy as np
import torch

from vmae2.cli import TrainingConfig


def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int) -> np.ndarray:
    """Official per-iteration schedule: ``linspace(0, base, warmup)`` (end point included), then
    ``final + (base - final) * (1 + cos(pi * i / L)) / 2`` for the remaining ``L`` steps."""
    warmup_steps = min(warmup_steps, total_steps)
    warm = np.linspace(0.0, base, warmup_steps) if warmup_steps > 0 else np.array([])
    i = np.arange(total_steps - warmup_steps)
    rest = final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / max(len(i), 1)))
    return np.concatenate([warm, rest])


def layer_id(name: str, depth: int) -> int:
    """Official layer-decay layer of a parameter: 0 for the embedding (``patch_embed``, ``pos_embed``,
    ``cls_token``, ``mask_token``), ``k + 1`` for ``blocks.k``, ``depth + 1`` for the rest (``fc_norm``, head)."""
    name = name.removeprefix("encoder.")
    if name.startswith(("patch_embed", "pos_embed", "cls_token", "mask_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(model: torch.nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """AdamW groups like the official optimizer factory: decay for >=2-D weights; none for 1-D params, biases
    and the mask token (by name, on the unwrapped model, so compile/DDP prefixes cannot change it). With
    ``layer_decay`` (fine-tuning), each group also carries ``lr_scale = layer_decay ** (depth + 1 - layer)``
    (:func:`layer_id`); the training loop multiplies the scheduled lr by it."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    depth = len(getattr(model, "blocks", getattr(getattr(model, "encoder", None), "blocks", [])))
    groups: dict[tuple[bool, int], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim <= 1 or name.endswith(".bias") or name in skip)
        layer = layer_id(name, depth) if layer_decay is not None else 0
        key = (decay, layer)
        if key not in groups:
            scale = layer_decay ** (depth + 1 - layer) if layer_decay is not None else 1.0
            groups[key] = {"params": [], "weight_decay": weight_decay if decay else 0.0, "apply_wd": decay,
                           "lr_scale": scale, "layer": layer}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[1], not k[0]))]


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas, eps: float,
                    fused: bool = True, layer_decay: float | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; fused (one kernel for all parameters, ~3x faster than the
    per-parameter loop on CPU) unless the parameters are FSDP-sharded."""
    return torch.optim.AdamW(param_groups(model, weight_decay, layer_decay), lr=lr, betas=tuple(betas), eps=eps,
                             fused=fused)


def set_schedule(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """This step's lr (times each group's ``lr_scale``) and weight decay (groups that take decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if group["apply_wd"]:
            group["weight_decay"] = weight_decay


def frees_grads_before_backward(device: torch.device) -> bool:
    """Where the step frees last step's gradients: just before the first backward on a CPU (glibc then hands the freed
    blocks to the new gradients instead of fresh pages to fault in: 7-10% of a ViT-S/B step, benchmarks/README.md),
    right after the optimizer step elsewhere (a GPU's caching allocator reuses memory either way, and the forward's
    peak stays without the gradients)."""
    return device.type == "cpu"


def optimizer_step(optimizer: torch.optim.Optimizer, scaler, parameters, max_norm: float | None,
                   free_grads: bool = True, norm: bool = True) -> torch.Tensor | None:
    """Unscale (fp16), clip or (``norm``) measure the gradient norm, step, and (``free_grads``) free the gradients;
    returns the norm on the device (no sync), or None when neither clipping nor ``norm`` asked for it."""
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = clip_or_norm(parameters, max_norm) if max_norm or norm else None
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if free_grads:
        optimizer.zero_grad(set_to_none=True)
    return grad_norm


def clip_or_norm(parameters, max_norm: float | None) -> torch.Tensor:
    """Clip to ``max_norm`` (when given) and return the total gradient norm, on the device (no sync)."""
    parameters = list(parameters)
    if max_norm:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    return torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])  # no rescaling pass


def schedules(cfg: TrainingConfig, steps_per_epoch: int, lr: float) -> tuple[int, np.ndarray, np.ndarray]:
    """``(total steps, lr per step, weight decay per step)`` of a run: ``--max_steps`` or the epochs (at least
    ``min_steps``), warm-up + cosine to ``min_lr`` scaled as ``lr`` was, weight decay cosine to ``weight_decay_end``."""
    total = cfg.max_steps or max(cfg.epochs * steps_per_epoch, cfg.min_steps)
    warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else int(cfg.warmup_epochs * steps_per_epoch)
    min_lr = cfg.min_lr * lr / cfg.lr
    wd_end = cfg.weight_decay_end if cfg.weight_decay_end is not None else cfg.weight_decay
    return total, cosine_schedule(lr, min_lr, total, warmup), cosine_schedule(cfg.weight_decay, wd_end, total, 0)
