"""Porting a spatiotemporal MAE (Feichtenhofer et al. 2022) to vmae2_kernels: ``original_step`` next to
``kernel_step``.

The recipe: tubelet patches, a cls token with its own position row, separable position tables (spatial
``[1, HW, C]`` + temporal ``[1, T', C]``, summed per token), agnostic random masking (argsort of noise over all
``N = T' * HW`` tubelets, 90 %, ``int(N * (1 - r))`` kept), a decoder with its own separable tables that works on the
token-ordered sequence (it reshapes to ``[B, T', HW, D]``: to add its tables and for a frame-wise attention block),
``norm_pix_loss`` per tubelet on the removed ones. (The paper's decoder has joint blocks only; the frame-wise
block stands for any decoder part that needs the token grid.) ``kernel_step`` runs the same submodules; every
changed line is marked ``# vmae2_kernels``.
Video ``[B, 3, T, H, W]``, tokens in ``(t, h, w)`` order, ``noise [B, N]``, masks 1 = removed.
Run ``python examples/port_spatiotemporal_mae.py``.
"""
from __future__ import annotations

import torch
from torch import nn

import vmae2_kernels as vk
from vmae2.models.layers import Block


class TinySpatiotemporalMAE(nn.Module):
    """Toy spatiotemporal MAE: ``patch_embed`` (Conv3d, kernel = stride = ``(t, p, p)``), ``cls_token``,
    ``pos_embed_spatial [1, HW, C]``, ``pos_embed_temporal [1, T', C]``, ``pos_embed_class [1, 1, C]``, ``blocks``,
    ``norm``, ``decoder_embed``, ``mask_token``, the three ``decoder_pos_embed_*`` tables (width ``D``),
    ``decoder_blocks`` (joint space-time), ``frame_block`` (attention within each frame), ``decoder_norm``,
    ``decoder_pred`` (``t * p * p * 3`` pixels per tubelet, channel fastest)."""

    def __init__(self, img_size: int = 32, patch_size: int = 8, num_frames: int = 4, tubelet_size: int = 2,
                 dim: int = 32, dec_dim: int = 32, depth: int = 1, dec_depth: int = 1, heads: int = 2):
        super().__init__()
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        T, HW = self.grid[0], self.grid[1] * self.grid[2]
        kernel = (tubelet_size, patch_size, patch_size)
        self.patch_embed = nn.Conv3d(3, dim, kernel, stride=kernel)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed_spatial = nn.Parameter(0.02 * torch.randn(1, HW, dim))
        self.pos_embed_temporal = nn.Parameter(0.02 * torch.randn(1, T, dim))
        self.pos_embed_class = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, 4 * dim, backend="math") for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.decoder_embed = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(0.02 * torch.randn(1, 1, dec_dim))
        self.decoder_pos_embed_spatial = nn.Parameter(0.02 * torch.randn(1, HW, dec_dim))
        self.decoder_pos_embed_temporal = nn.Parameter(0.02 * torch.randn(1, T, dec_dim))
        self.decoder_pos_embed_class = nn.Parameter(0.02 * torch.randn(1, 1, dec_dim))
        self.decoder_blocks = nn.ModuleList(Block(dec_dim, heads, 4 * dec_dim, backend="math")
                                            for _ in range(dec_depth))
        self.frame_block = Block(dec_dim, heads, 4 * dec_dim, backend="math")
        self.decoder_norm = nn.LayerNorm(dec_dim)
        self.decoder_pred = nn.Linear(dec_dim, tubelet_size * patch_size ** 2 * 3)


def original_step(model, video, noise, mask_ratio):
    """The recipe in plain torch: ``video [B, 3, T, H, W]``, ``noise [B, N]`` -> ``pred [B, N, t*p*p*3]``, loss."""
    B, N = noise.shape
    T, HW = model.grid[0], model.grid[1] * model.grid[2]
    x = model.patch_embed(video).flatten(2).transpose(1, 2)
    x = x + model.pos_embed_spatial.repeat(1, T, 1) + model.pos_embed_temporal.repeat_interleave(HW, dim=1)
    len_keep = int(N * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)  # agnostic: one ranking over all space-time tokens
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    x = torch.gather(x, 1, ids_shuffle[:, :len_keep, None].expand(-1, -1, x.shape[-1]))
    mask = torch.gather(torch.cat([noise.new_zeros(B, len_keep), noise.new_ones(B, N - len_keep)], 1), 1,
                        ids_restore)
    cls = (model.cls_token + model.pos_embed_class).expand(B, -1, -1)
    x = torch.cat([cls, x], dim=1)
    for blk in model.blocks:
        x = blk(x)
    x = model.decoder_embed(model.norm(x))
    D = x.shape[-1]
    tokens = torch.cat([x[:, 1:], model.mask_token.expand(B, N - len_keep, -1)], dim=1)
    tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, D))  # un-shuffle: (t, h, w) order
    grid = tokens.reshape(B, T, HW, D) + model.decoder_pos_embed_temporal[:, :, None]  # separable tables, added
    grid = grid + model.decoder_pos_embed_spatial[:, None]  # on the [B, T', HW, D] grid
    x = torch.cat([x[:, :1] + model.decoder_pos_embed_class, grid.flatten(1, 2)], dim=1)
    for blk in model.decoder_blocks:
        x = blk(x)
    x = torch.cat([x[:, :1], model.frame_block(x[:, 1:].reshape(B * T, HW, D)).reshape(B, N, D)], dim=1)
    pred = model.decoder_pred(model.decoder_norm(x))[:, 1:]
    t, p, (_, _, frames, H, W) = model.tubelet_size, model.patch_size, video.shape
    target = video.reshape(B, 3, frames // t, t, H // p, p, W // p, p).permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(B, N, -1)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    loss = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    return pred, loss


def kernel_step(model, video, noise, mask_ratio):
    """The same step on vmae2_kernels; the same arguments and results."""
    B, N = noise.shape
    T, HW = model.grid[0], model.grid[1] * model.grid[2]
    ids = vk.random_ids(B, N, mask_ratio, noise)  # vmae2_kernels: the same kept set, ascending
    pos = (model.pos_embed_temporal[:, :, None] + model.pos_embed_spatial[:, None]).flatten(1, 2)  # vmae2_kernels
    proj = model.patch_embed  # vmae2_kernels: its weight and bias embed the kept tubelets alone
    x = vk.patch_embed(video, ids, proj.weight, proj.bias, pos)  # vmae2_kernels: [B, K, C] + pos rows
    cls = (model.cls_token + model.pos_embed_class).expand(B, -1, -1)
    x = torch.cat([cls, x], dim=1)
    for blk in model.blocks:
        x = blk(x)
    x = model.decoder_embed(model.norm(x))
    D = x.shape[-1]
    grid = model.decoder_pos_embed_temporal[:, :, None] + model.decoder_pos_embed_spatial[:, None]  # vmae2_kernels
    dec_pos = torch.cat([model.decoder_pos_embed_class, grid.flatten(1, 2)], dim=1)  # vmae2_kernels: [1, 1 + N, D]
    x = vk.decoder_input(x, ids, None, model.mask_token, dec_pos, num_prefix=1, layout="ordered")  # vmae2_kernels
    for blk in model.decoder_blocks:
        x = blk(x)
    x = torch.cat([x[:, :1], model.frame_block(x[:, 1:].reshape(B * T, HW, D)).reshape(B, N, D)], dim=1)
    pred = model.decoder_pred(model.decoder_norm(x))[:, 1:]
    mask = vk.ids_to_mask(ids, N)  # vmae2_kernels: True = removed
    loss = vk.recon_loss(pred, video, None, mask, patch_size=model.patch_size,  # vmae2_kernels: norm_pix_loss
                         tubelet_size=model.tubelet_size, target="mae")  # vmae2_kernels: per tubelet, fused
    return pred, loss


def main() -> None:
    torch.manual_seed(0)
    model = TinySpatiotemporalMAE()
    video = torch.randn(2, 3, 4, 32, 32)
    noise = torch.rand(2, 32)
    pred_o, loss_o = original_step(model, video, noise, 0.9)
    pred_k, loss_k = kernel_step(model, video, noise, 0.9)
    print(f"spatiotemporal MAE: loss original {loss_o.item():.6f}  kernels {loss_k.item():.6f}  "
          f"max |pred diff| {(pred_o - pred_k).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
