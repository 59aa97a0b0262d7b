"""Architectures of the official VideoMAE V2 models (S/B/L/H/g), plus a vmae2-only ``tiny`` for CPU demos."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ViTConfig:
    """One ViT size. ``mlp_hidden`` is ``int(dim * mlp_ratio)``; the decoder uses the same ``mlp_ratio``."""

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    decoder_embed_dim: int
    decoder_num_heads: int


SIZES = {
    # vmae2-only: a tiny ViT for CPU demos and tests (not an official model; no official weights exist).
    "tiny": ViTConfig(16, 192, 4, 3, 4.0, 96, 3),
    "small": ViTConfig(16, 384, 12, 6, 4.0, 192, 3),
    "base": ViTConfig(16, 768, 12, 12, 4.0, 384, 6),
    "large": ViTConfig(16, 1024, 24, 16, 4.0, 512, 8),
    "huge": ViTConfig(16, 1280, 32, 16, 4.0, 512, 8),
    "giant": ViTConfig(14, 1408, 40, 16, 48 / 11, 512, 8),
}

PRETRAIN_NAMES = {f"pretrain_videomae_{s}_patch{c.patch_size}_224": s for s, c in SIZES.items()}
FINETUNE_NAMES = {f"vit_{s}_patch{c.patch_size}_224": s for s, c in SIZES.items()}

# How a classifier pools its last block's tokens (``pool`` / ``--pool``).
POOLS = {
    "mean": "fc_norm of the mean token (official)",
    "mean_motion": "fc_norm of the mean token concatenated with the mean |x[t+1] - x[t]| of each token between "
                   "consecutive time slots (2 x embed_dim features; for motion classes on small data sets)",
}

# Activation checkpointing (``use_checkpoint`` / ``--with_checkpoint``): what each mode recomputes in backward.
CHECKPOINT_MODES = {
    "none": "nothing (every activation is kept)",
    "attn": "the attention branch (norm1, qkv, attention, proj) of every block",
    "mlp": "the MLP branch (norm2, fc1, GELU, fc2) of every block",
    "every:K": "blocks 0, K, 2K, ... of each stack, whole",
    "full": "every block, whole (the official ViT-H/g scripts)",
}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def checkpoint_mode(value, allow_auto: bool = False) -> str:
    """The canonical activation-checkpointing mode of ``value``: one of :data:`CHECKPOINT_MODES` (``every:K`` with
    ``K >= 2``: ``every:1`` is ``full``), or ``auto`` where ``allow_auto``. ``True`` / ``true`` mean ``full``, ``False``
    / ``false`` mean ``none``. Raises ``ValueError`` naming what is accepted."""
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return "full" if text in _TRUE else "none"
    if text in ("none", "attn", "mlp", "full") or (text == "auto" and allow_auto):
        return text
    k = text[len("every:"):]
    if text.startswith("every:") and k.isdigit() and int(k) >= 1:
        return "full" if int(k) == 1 else f"every:{int(k)}"
    raise ValueError(f"activation checkpointing {value!r} is unknown; choose one of {checkpoint_spellings(allow_auto)}")


def checkpoint_spellings(allow_auto: bool = False) -> str:
    """The accepted spellings of :func:`checkpoint_mode`, for messages."""
    return "false, true, " + ("auto, " if allow_auto else "") + ", ".join(CHECKPOINT_MODES) + " (K >= 1)"


def list_models() -> list[str]:
    return sorted(PRETRAIN_NAMES) + sorted(FINETUNE_NAMES)


def model_config(name: str) -> ViTConfig:
    """The architecture of the model ``name`` (its patch size, widths, depths); unknown names raise."""
    size = PRETRAIN_NAMES.get(name) or FINETUNE_NAMES.get(name)
    if size is None:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return SIZES[size]
