"""The official VideoMAE V2 pretraining model as an ``nn.Module`` (reference sections 2, 4), the step baseline.

The modules carry the official parameter names, so ``PretrainVisionTransformer.state_dict()`` of vmae2 loads into
:class:`OfficialPretrainModel` with ``strict=True``. It follows the official code path:

* encoder: Conv3d patch embedding of all N tokens, the fixed sinusoid table added to **all** N tokens (the table
  is a plain CPU attribute, converted and copied to the device at every forward), then the boolean gather
  ``x[~mask].reshape(B, -1, C)``;
* attention and MLP: :func:`oracle.functional.attention` / :func:`~oracle.functional.mlp` (explicit
  softmax: the N x N score matrix is materialised);
* decoder input: the decoder table expanded to ``[B, N, D_dec]``, cast like the *video* (fp32 even under autocast)
  and cloned, then two boolean gathers (encoder-visible and decoder-visible positions) and ``cat([x_vis + pos_vis,
  mask_token + pos_dec])``; output ``head(norm(x[:, -N_dv:]))``.

Masks ``[B, N]`` bool, True = dropped (encoder) / not reconstructed (decoder); tokens in ``(t, h, w)`` order.
"""
from __future__ import annotations

import torch
from torch import nn

from .functional import LN_EPS, attention, mlp, sinusoid_table


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, num_frames: int, tubelet_size: int, dim: int):
        super().__init__()
        self.img_size = img_size
        self.num_patches = (img_size // patch_size) ** 2 * (num_frames // tubelet_size)
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(3, dim, kernel_size=kernel, stride=kernel)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        assert video.shape[-2:] == (self.img_size, self.img_size), "input size does not match the model"
        return self.proj(video).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Official attention parameters (``qkv`` without bias, ``q_bias``, ``v_bias``, ``proj``) around
    :func:`~oracle.functional.attention`."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return attention(x, self.qkv.weight, self.q_bias, self.v_bias, self.proj.weight, self.proj.bias,
                         self.num_heads)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mlp(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)


class Block(nn.Module):
    """Pre-norm block, LayerNorm eps 1e-6, no layer scale, drop-path 0 (an Identity)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.drop_path = nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, with_cp: bool) -> torch.Tensor:
    for blk in blocks:
        # The official code calls torch.utils.checkpoint.checkpoint(blk, x): reentrant, the default of the torch it
        # was written for.
        x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=True) if with_cp else blk(x)
    return x


class Encoder(nn.Module):
    def __init__(self, img_size, patch_size, num_frames, tubelet_size, dim, depth, num_heads, mlp_ratio, with_cp):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, num_frames, tubelet_size, dim)
        self.pos_embed = sinusoid_table(self.patch_embed.num_patches, dim)  # plain attribute: not in state_dict
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.head = nn.Identity()
        self.with_cp = with_cp

    def forward(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(video)
        x = x + self.pos_embed.type_as(x).to(x.device).clone().detach()  # every token, before any is dropped
        B, _, C = x.shape
        x_vis = x[~mask].reshape(B, -1, C)
        return self.head(self.norm(run_blocks(self.blocks, x_vis, self.with_cp)))


class Decoder(nn.Module):
    def __init__(self, dim, depth, num_heads, mlp_ratio, out_dim, with_cp):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.head = nn.Linear(dim, out_dim)
        self.with_cp = with_cp

    def forward(self, x: torch.Tensor, return_token_num: int) -> torch.Tensor:
        x = run_blocks(self.blocks, x, self.with_cp)
        if return_token_num > 0:
            x = x[:, -return_token_num:]
        return self.head(self.norm(x))


class OfficialPretrainModel(nn.Module):
    """``model(video, mask, decode_mask)``: bool masks ``[B, N]``, True = dropped / not reconstructed."""

    def __init__(self, *, img_size=224, patch_size=16, num_frames=16, tubelet_size=2, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, decoder_embed_dim=384, decoder_depth=4, decoder_num_heads=6,
                 with_cp=False):
        super().__init__()
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        self.encoder = Encoder(img_size, patch_size, num_frames, tubelet_size, embed_dim, depth, num_heads,
                               mlp_ratio, with_cp)
        out_dim = 3 * tubelet_size * patch_size ** 2
        self.decoder = Decoder(decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio, out_dim, with_cp)
        self.encoder_to_decoder = nn.Linear(embed_dim, decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.pos_embed = sinusoid_table(self.encoder.patch_embed.num_patches, decoder_embed_dim)  # plain attribute
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "mask_token"}

    def forward(self, video: torch.Tensor, mask: torch.Tensor, decode_mask: torch.Tensor | None = None):
        decode_vis = mask if decode_mask is None else ~decode_mask
        x_vis = self.encoder_to_decoder(self.encoder(video, mask))
        B, _, C = x_vis.shape
        # The decoder table follows the *input video* (fp32 even under autocast), materialised per sample.
        pos = self.pos_embed.expand(B, -1, -1).type_as(video).to(video.device).clone().detach()
        pos_vis = pos[~mask].reshape(B, -1, C)
        pos_dec = pos[decode_vis].reshape(B, -1, C)
        x_full = torch.cat([x_vis + pos_vis, self.mask_token + pos_dec], dim=1)
        return self.decoder(x_full, pos_dec.shape[1])


def official_from_vmae2(model, *, with_cp: bool | None = None) -> OfficialPretrainModel:
    """An :class:`OfficialPretrainModel` of the same architecture and device as the vmae2 ``model``, holding its
    weights (loaded with ``strict=True``: the keys are the official ones)."""
    cfg = model.cfg
    pe = model.encoder.patch_embed
    device = next(model.parameters()).device
    with torch.device(device):
        official = OfficialPretrainModel(
            img_size=pe.img_size, patch_size=cfg.patch_size, num_frames=pe.num_frames, tubelet_size=pe.tubelet_size,
            embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
            decoder_embed_dim=cfg.decoder_embed_dim, decoder_depth=len(model.decoder.blocks),
            decoder_num_heads=cfg.decoder_num_heads,
            with_cp=model.encoder.use_checkpoint != "none" if with_cp is None else with_cp)
    # The tables stay CPU attributes, as in the official code (sinusoid_table builds them from numpy: on the CPU).
    official.load_state_dict(model.state_dict(), strict=True)
    return official
