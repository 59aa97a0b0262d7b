"""Model zoo under the official names.

``create_model(name, **overrides)`` builds any of the five pretraining models
(``pretrain_videomae_{small,base,large,huge}_patch16_224``, ``pretrain_videomae_giant_patch14_224``) or the
five classification models (``vit_{small,base,large,huge}_patch16_224``, ``vit_giant_patch14_224``).
Overrides are constructor keywords, e.g. ``num_classes``, ``decoder_depth``, ``num_frames``, ``img_size``,
``drop_path_rate``, ``use_checkpoint``, ``attn_backend``.
"""
from __future__ import annotations

import inspect

from torch import nn

from vmae2.models.configs import FINETUNE_NAMES, PRETRAIN_NAMES, SIZES, ViTConfig
from vmae2.models.finetune import VisionTransformer
from vmae2.models.pretrain import PretrainVisionTransformer

__all__ = ["create_model", "list_models", "count_parameters", "PretrainVisionTransformer", "VisionTransformer",
           "ViTConfig", "SIZES"]


def list_models() -> list[str]:
    return sorted(PRETRAIN_NAMES) + sorted(FINETUNE_NAMES)


def create_model(name: str, **overrides) -> nn.Module:
    """Build the official model ``name``; unknown names or keywords raise with the accepted ones."""
    if name in PRETRAIN_NAMES:
        cls, size = PretrainVisionTransformer, PRETRAIN_NAMES[name]
    elif name in FINETUNE_NAMES:
        cls, size = VisionTransformer, FINETUNE_NAMES[name]
    else:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "cfg")]
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise TypeError(f"{name} does not accept {unknown}; accepted overrides: {accepted}")
    return cls(SIZES[size], **overrides)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (works on ``meta`` tensors too)."""
    return sum(p.numel() for p in model.parameters())
