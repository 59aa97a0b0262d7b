"""Porting VideoMAE v1 (Tong et al. 2022) to vmae2_kernels: ``original_step`` next to ``kernel_step``.

The recipe: tube masking (every temporal slice masks the same 90 % of the spatial positions; the data loader makes
the ``[B, N]`` bool mask, True = masked), fixed 1-D sinusoid position tables over the flat token index, no cls token,
a decoder that reconstructs every masked token (``[visible | mask tokens]``, the prediction read from the last rows),
and targets made from the un-normalised pixels, normalised per tubelet and channel: ``(x - mean) / (std + 1e-6)``.
``kernel_step`` runs the same submodules; every changed line is marked ``# vmae2_kernels``.
Video ``[B, 3, T, H, W]`` (ImageNet-normalised), tokens in ``(t, h, w)`` order.
Run ``python examples/port_videomae_v1.py``.
"""
from __future__ import annotations

import torch
from torch import nn

import vmae2_kernels as vk
from vmae2.models.layers import Block, sinusoid_table


class TinyVideoMAE(nn.Module):
    """VideoMAE v1's parts at toy size: ``patch_embed`` (Conv3d, kernel = stride = ``(t, p, p)``), fixed
    ``pos_embed [1, N, C]``, ``blocks``, ``norm``, ``encoder_to_decoder`` (no bias), ``mask_token``, fixed
    ``decoder_pos_embed [1, N, D]``, ``decoder_blocks``, ``decoder_norm``, ``head`` (``t * p * p * 3`` pixels,
    channel fastest)."""

    def __init__(self, img_size: int = 32, patch_size: int = 8, num_frames: int = 4, tubelet_size: int = 2,
                 dim: int = 32, dec_dim: int = 32, depth: int = 1, dec_depth: int = 1, heads: int = 2):
        super().__init__()
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        N = self.grid[0] * self.grid[1] * self.grid[2]
        kernel = (tubelet_size, patch_size, patch_size)
        self.patch_embed = nn.Conv3d(3, dim, kernel, stride=kernel)
        self.register_buffer("pos_embed", sinusoid_table(N, dim)[None])
        self.blocks = nn.ModuleList(Block(dim, heads, 4 * dim, backend="math") for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.encoder_to_decoder = nn.Linear(dim, dec_dim, bias=False)
        self.mask_token = nn.Parameter(0.02 * torch.randn(1, 1, dec_dim))
        self.register_buffer("decoder_pos_embed", sinusoid_table(N, dec_dim)[None])
        self.decoder_blocks = nn.ModuleList(Block(dec_dim, heads, 4 * dec_dim, backend="math")
                                            for _ in range(dec_depth))
        self.decoder_norm = nn.LayerNorm(dec_dim)
        self.head = nn.Linear(dec_dim, tubelet_size * patch_size ** 2 * 3)


def tube_mask(batch_size, grid, ratio, generator=None):
    """The data loader's tube mask ``[B, T' * H' * W']`` bool, True = masked: per sample ``int(ratio * H'W')``
    spatial positions drawn at random, masked in every temporal slice."""
    T, H, W = grid
    ranks = torch.rand(batch_size, H * W, generator=generator).argsort(1).argsort(1)
    return (ranks < int(ratio * H * W)).repeat(1, T)


def original_step(model, video, mask):
    """The recipe in plain torch: ``video [B, 3, T, H, W]``, ``mask [B, N]`` -> ``pred [B, N_masked, t*p*p*3]``,
    loss."""
    B = video.shape[0]
    x = model.patch_embed(video).flatten(2).transpose(1, 2) + model.pos_embed
    x_vis = x[~mask].reshape(B, -1, x.shape[-1])  # boolean gather: a host sync
    for blk in model.blocks:
        x_vis = blk(x_vis)
    x_vis = model.encoder_to_decoder(model.norm(x_vis))
    pos = model.decoder_pos_embed.expand(B, -1, -1)
    pos_vis = pos[~mask].reshape(B, -1, pos.shape[-1])
    pos_masked = pos[mask].reshape(B, -1, pos.shape[-1])
    x = torch.cat([x_vis + pos_vis, model.mask_token + pos_masked], dim=1)
    for blk in model.decoder_blocks:
        x = blk(x)
    pred = model.head(model.decoder_norm(x[:, x_vis.shape[1]:]))
    mean = torch.tensor(vk.IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(vk.IMAGENET_DEFAULT_STD).view(1, 3, 1, 1, 1)
    pixels = video * std + mean  # the target is made from un-normalised pixels
    t, p, (_, _, frames, H, W) = model.tubelet_size, model.patch_size, video.shape
    patches = pixels.reshape(B, 3, frames // t, t, H // p, p, W // p, p).permute(0, 2, 4, 6, 3, 5, 7, 1)
    patches = patches.reshape(B, -1, t * p * p, 3)  # [B, N, pixels of a tubelet, channel]
    target = (patches - patches.mean(-2, keepdim=True)) / (patches.var(-2, keepdim=True).sqrt() + 1e-6)
    labels = target.flatten(2)[mask].reshape(B, -1, t * p * p * 3)
    loss = ((pred - labels) ** 2).mean()
    return pred, loss


def kernel_step(model, video, mask, num_visible):
    """The same step on vmae2_kernels. ``num_visible`` (known from the ratio) makes the bool -> ids step sync-free;
    ids can also be drawn on the device, ``vk.tube_ids(B, grid, 0.9, generator)``."""
    N = mask.shape[1]  # vmae2_kernels: the number of tokens, for the ids
    vis_ids = vk.mask_to_ids(mask, num_visible)  # vmae2_kernels: visible ids, ascending, no sync
    proj = model.patch_embed  # vmae2_kernels: its weight and bias embed the visible tubelets alone
    x_vis = vk.patch_embed(video, vis_ids, proj.weight, proj.bias, model.pos_embed)  # vmae2_kernels: + pos rows
    for blk in model.blocks:
        x_vis = blk(x_vis)
    x_vis = model.encoder_to_decoder(model.norm(x_vis))
    x = vk.decoder_input(x_vis, vis_ids, None, model.mask_token, model.decoder_pos_embed)  # vmae2_kernels
    for blk in model.decoder_blocks:
        x = blk(x)
    pred = model.head(model.decoder_norm(x[:, x_vis.shape[1]:]))
    masked_ids = vk.complement_ids(vis_ids, N)  # vmae2_kernels: the ids of pred's rows, ascending
    loss = vk.recon_loss(pred, video, masked_ids, mask, patch_size=model.patch_size,  # vmae2_kernels: fused loss
                         tubelet_size=model.tubelet_size, target="videomae",  # vmae2_kernels
                         mean=vk.IMAGENET_DEFAULT_MEAN, std=vk.IMAGENET_DEFAULT_STD)  # vmae2_kernels
    return pred, loss


def main() -> None:
    torch.manual_seed(0)
    model = TinyVideoMAE()
    video = torch.randn(2, 3, 4, 32, 32)
    mask = tube_mask(2, model.grid, 0.9)
    num_visible = vk.keep_count(16, 0.9, "videomae") * model.grid[0]
    pred_o, loss_o = original_step(model, video, mask)
    pred_k, loss_k = kernel_step(model, video, mask, num_visible)
    print(f"VideoMAE v1: loss original {loss_o.item():.6f}  kernels {loss_k.item():.6f}  "
          f"max |pred diff| {(pred_o - pred_k).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
