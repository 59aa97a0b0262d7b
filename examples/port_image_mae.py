"""Porting an image MAE (He et al. 2022) to vmae2_kernels: ``original_step`` next to ``kernel_step``.

The recipe: a cls token; a ``[1, 1 + N, C]`` position table (fixed 2-D sin-cos values, left learnable here so the
tests see its gradient); per-sample random masking by the ``argsort`` of uniform noise, keeping ``int(N * (1 - r))``
patches; the decoder puts mask tokens back in token order with ``ids_restore``; ``norm_pix_loss`` on the removed
patches. ``kernel_step`` runs the same submodules; every changed line is marked ``# vmae2_kernels``.
Images ``[B, 3, H, W]``, patches in ``(h, w)`` order, ``noise [B, N]``, masks 1 = removed.
Run ``python examples/port_image_mae.py``.
"""
from __future__ import annotations

import torch
from torch import nn

import vmae2_kernels as vk
from vmae2.models.layers import Block


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """``[h * w, dim]`` fixed table in ``(h, w)`` order: the first half of the channels encodes the row, the second
    the column, each as ``[sin | cos]`` of the coordinate times ``dim / 4`` frequencies ``10000^(-k / (dim / 4))``."""
    freqs = 10000.0 ** (-torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    angles = [coord.flatten()[:, None] * freqs for coord in (rows, cols)]
    return torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1).float()


class TinyImageMAE(nn.Module):
    """MAE's parameter layout at toy size: ``patch_embed`` (Conv2d), ``cls_token``, ``pos_embed [1, 1 + N, C]``,
    ``blocks``, ``norm``, ``decoder_embed``, ``mask_token``, ``decoder_pos_embed [1, 1 + N, D]``, ``decoder_blocks``,
    ``decoder_norm``, ``decoder_pred`` (``p * p * 3`` pixels per patch, channel fastest)."""

    def __init__(self, img_size: int = 32, patch_size: int = 8, dim: int = 32, dec_dim: int = 32, depth: int = 1,
                 dec_depth: int = 1, heads: int = 2):
        super().__init__()
        self.patch_size, g = patch_size, img_size // patch_size
        self.patch_embed = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.cat([torch.zeros(1, dim), sincos_2d(g, g, dim)])[None])
        self.blocks = nn.ModuleList(Block(dim, heads, 4 * dim, backend="math") for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.decoder_embed = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(0.02 * torch.randn(1, 1, dec_dim))
        self.decoder_pos_embed = nn.Parameter(torch.cat([torch.zeros(1, dec_dim), sincos_2d(g, g, dec_dim)])[None])
        self.decoder_blocks = nn.ModuleList(Block(dec_dim, heads, 4 * dec_dim, backend="math")
                                            for _ in range(dec_depth))
        self.decoder_norm = nn.LayerNorm(dec_dim)
        self.decoder_pred = nn.Linear(dec_dim, patch_size ** 2 * 3)


def original_step(model, imgs, noise, mask_ratio):
    """The recipe in plain torch: ``imgs [B, 3, H, W]``, ``noise [B, N]`` -> ``pred [B, N, p*p*3]``, loss."""
    B, N = noise.shape
    x = model.patch_embed(imgs).flatten(2).transpose(1, 2) + model.pos_embed[:, 1:]
    len_keep = int(N * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending noise: the first len_keep are kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
    mask = torch.gather(torch.cat([noise.new_zeros(B, len_keep), noise.new_ones(B, N - len_keep)], 1), 1,
                        ids_restore)
    cls = (model.cls_token + model.pos_embed[:, :1]).expand(B, -1, -1)
    x = torch.cat([cls, x], dim=1)
    for blk in model.blocks:
        x = blk(x)
    x = model.decoder_embed(model.norm(x))
    tokens = torch.cat([x[:, 1:], model.mask_token.expand(B, N - len_keep, -1)], dim=1)
    tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))  # un-shuffle
    x = torch.cat([x[:, :1], tokens], dim=1) + model.decoder_pos_embed
    for blk in model.decoder_blocks:
        x = blk(x)
    pred = model.decoder_pred(model.decoder_norm(x))[:, 1:]
    p, (H, W) = model.patch_size, imgs.shape[2:]
    target = imgs.reshape(B, 3, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).reshape(B, N, p * p * 3)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    loss = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    return pred, loss


def kernel_step(model, imgs, noise, mask_ratio):
    """The same step on vmae2_kernels; the same arguments and results."""
    B, N = noise.shape
    ids = vk.random_ids(B, N, mask_ratio, noise)  # vmae2_kernels: MAE's kept set for this noise, ascending
    weight = model.patch_embed.weight.unsqueeze(2)  # vmae2_kernels: the Conv2d as a one-frame Conv3d
    x = vk.patch_embed(imgs.unsqueeze(2), ids, weight, model.patch_embed.bias, model.pos_embed[:, 1:])  # vmae2_kernels
    cls = (model.cls_token + model.pos_embed[:, :1]).expand(B, -1, -1)
    x = torch.cat([cls, x], dim=1)
    for blk in model.blocks:
        x = blk(x)
    x = model.decoder_embed(model.norm(x))
    x = vk.decoder_input(x, ids, None, model.mask_token, model.decoder_pos_embed,  # vmae2_kernels: + mask tokens,
                         num_prefix=1, layout="ordered")  # vmae2_kernels: un-shuffled (cls first), + pos
    for blk in model.decoder_blocks:
        x = blk(x)
    pred = model.decoder_pred(model.decoder_norm(x))[:, 1:]
    mask = vk.ids_to_mask(ids, N)  # vmae2_kernels: True = removed
    loss = vk.recon_loss(pred, imgs, None, mask, patch_size=model.patch_size, tubelet_size=1,  # vmae2_kernels
                         target="mae")  # vmae2_kernels: norm_pix_loss, fused
    return pred, loss


def main() -> None:
    torch.manual_seed(0)
    model = TinyImageMAE()
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    pred_o, loss_o = original_step(model, imgs, noise, 0.75)
    pred_k, loss_k = kernel_step(model, imgs, noise, 0.75)
    print(f"image MAE: loss original {loss_o.item():.6f}  kernels {loss_k.item():.6f}  "
          f"max |pred diff| {(pred_o - pred_k).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
