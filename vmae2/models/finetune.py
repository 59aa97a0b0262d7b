"""VideoMAE V2 classification ViT (fine-tuning / evaluation), official ``VisionTransformer`` keys.

Mean pooling over all tokens + ``fc_norm`` (no class token, no ``norm.*`` keys), head dropout, head
initialised with truncated normal (std 0.02) scaled by ``init_scale``. ``pool="mean_motion"`` (not official, an
option for small data sets) concatenates the mean token with the mean absolute change of each token between
consecutive time slots, so ``fc_norm`` and the head take ``2 x embed_dim`` features: same keys, other shapes.

Position embedding: the fixed sinusoid table of the model's own token grid (official). When the encoder was
pretrained on another grid (e.g. 16 frames, fine-tuning on 32), pass ``pos_embed_grid`` = the pretraining grid
``(t, h, w)``: the pretraining table is then resampled onto this model's grid (see
:func:`~vmae2.models.layers.interpolate_pos_table`). The table is a function of the constructor arguments, so
checkpoints keep exactly the official keys.
"""
from __future__ import annotations

import torch
from torch import nn

from vmae2.models.configs import POOLS, ViTConfig, checkpoint_mode
from vmae2.models.layers import (
    PatchEmbed,
    check_geometry,
    init_trunc_normal,
    interpolate_pos_table,
    make_blocks,
    run_blocks,
    sinusoid_table,
)


class VisionTransformer(nn.Module):
    """``model(video [B, 3, T, H, W]) -> logits [B, num_classes]``."""

    def __init__(self, cfg: ViTConfig, *, num_classes: int = 400, img_size: int = 224, num_frames: int = 16,
                 tubelet_size: int = 2, drop_path_rate: float = 0.0, head_drop_rate: float = 0.0,
                 init_values: float = 0.0, init_scale: float = 0.001, use_checkpoint: bool | str = False,
                 attn_backend: str = "auto", pos_embed_grid: tuple[int, int, int] | None = None,
                 pool: str = "mean"):
        super().__init__()
        check_geometry(img_size, num_frames, tubelet_size, cfg.patch_size)
        if num_classes < 0:
            raise ValueError(f"num_classes {num_classes} must be >= 0 (0 = features only)")
        if pool not in POOLS:
            raise ValueError(f"pool {pool!r} is not one of {', '.join(POOLS)}")
        if pool == "mean_motion" and num_frames // tubelet_size < 2:
            raise ValueError(f"pool 'mean_motion' needs at least 2 time slots; num_frames {num_frames} / "
                             f"tubelet_size {tubelet_size} gives 1: use more frames or pool 'mean'")
        self.cfg = cfg
        self.num_classes = num_classes
        self.patch_embed = PatchEmbed(img_size, cfg.patch_size, num_frames, tubelet_size, cfg.embed_dim)
        grid = self.patch_embed.grid
        src = tuple(pos_embed_grid) if pos_embed_grid is not None else grid
        if len(src) != 3 or min(src) < 1:
            raise ValueError(f"pos_embed_grid {pos_embed_grid} must be the pretraining token grid (t, h, w), e.g. "
                             f"(8, 14, 14) for 16 frames at 224 px with patch 16")
        self.pos_embed_grid = src
        table = interpolate_pos_table(sinusoid_table(src[0] * src[1] * src[2], cfg.embed_dim), src, grid)
        self.register_buffer("pos_embed", table, persistent=False)
        self.blocks = make_blocks(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.depth, drop_path_rate,
                                  init_values, attn_backend)
        self.pool = pool
        self.num_features = cfg.embed_dim * (2 if pool == "mean_motion" else 1)
        self.fc_norm = nn.LayerNorm(self.num_features, eps=1e-6)
        self.head_dropout = nn.Dropout(head_drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.use_checkpoint = checkpoint_mode(use_checkpoint)  # see CHECKPOINT_MODES
        self.apply(init_trunc_normal)
        if num_classes > 0:
            with torch.no_grad():
                self.head.weight.mul_(init_scale)
                self.head.bias.mul_(init_scale)

    def forward_tokens(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W] -> [B, N, D]``: the last block's tokens, ``(t, h, w)`` order, before pooling."""
        x = self.patch_embed(video)
        x = x + self.pos_embed.to(x.dtype)
        return run_blocks(self.blocks, x, self.use_checkpoint)

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, N, D] -> [B, num_features]``: the mean token; with ``mean_motion`` also the mean over tokens and
        consecutive time slots of ``|x[t + 1] - x[t]|`` (tokens in ``(t, h, w)`` order)."""
        mean = tokens.mean(dim=1)
        if self.pool == "mean":
            return mean
        slots = tokens.unflatten(1, (self.patch_embed.grid[0], -1))  # [B, T', H'W', D]
        motion = (slots[:, 1:] - slots[:, :-1]).abs().mean(dim=(1, 2))
        return torch.cat([mean, motion], dim=1)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W] -> [B, num_features]``: ``fc_norm`` of the pooled tokens."""
        return self.fc_norm(self.pool_tokens(self.forward_tokens(video)))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_dropout(self.forward_features(video)))
