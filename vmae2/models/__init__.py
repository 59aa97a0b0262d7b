"""Model zoo under the official names.

``create_model(name, **overrides)`` builds any of the five pretraining models
(``pretrain_videomae_{small,base,large,huge}_patch16_224``, ``pretrain_videomae_giant_patch14_224``) or the
five classification models (``vit_{small,base,large,huge}_patch16_224``, ``vit_giant_patch14_224``).
Overrides are constructor keywords, e.g. ``num_classes``, ``decoder_depth``, ``num_frames``, ``img_size``,
``drop_path_rate``, ``use_checkpoint``, ``attn_backend``.

Importing this package does not import torch (the CLIs read names and geometry from :mod:`vmae2.models.configs`
before any work); the model classes load on first use.
"""
from __future__ import annotations

import inspect

from vmae2.models.configs import FINETUNE_NAMES, PRETRAIN_NAMES, SIZES, ViTConfig, list_models, model_config

__all__ = ["create_model", "list_models", "model_config", "count_parameters", "PretrainVisionTransformer",
           "VisionTransformer", "ViTConfig", "SIZES"]


def __getattr__(name: str):
    if name == "PretrainVisionTransformer":
        from vmae2.models.pretrain import PretrainVisionTransformer

        return PretrainVisionTransformer
    if name == "VisionTransformer":
        from vmae2.models.finetune import VisionTransformer

        return VisionTransformer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_model(name: str, **overrides):
    """Build the official model ``name`` (an ``nn.Module``); unknown names or keywords raise with the accepted
    ones."""
    from vmae2.models.finetune import VisionTransformer
    from vmae2.models.pretrain import PretrainVisionTransformer

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


def count_parameters(model) -> int:
    """Number of parameters (works on ``meta`` tensors too)."""
    return sum(p.numel() for p in model.parameters())
