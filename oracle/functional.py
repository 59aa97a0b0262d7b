"""The official VideoMAE V2 pretraining forward, functional, on an official-format ``state_dict`` (sections 2, 4).

Plain torch / numpy on the official keys (``encoder.blocks.0.attn.qkv.weight``, ``mask_token``, ...), so it can be
fed the weights of the implementation under test. The attention, MLP and position table here are also the pieces
of the ``nn.Module`` baseline in :mod:`oracle.model`.

A few :class:`Variant` switches (``pos_layout``, ``gelu``, ``ln_eps``, ``decoder_order``) select deliberately
*wrong* variants, so tests can show that a comparison would notice such a deviation; the defaults are official.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .loss import TUBELET

LN_EPS = 1e-6

# Section 4.1 of the reference: (patch, D, depth, heads, mlp_ratio, D_dec, dec_heads).
OFFICIAL_SIZES = {
    "pretrain_videomae_small_patch16_224": (16, 384, 12, 6, 4.0, 192, 3),
    "pretrain_videomae_base_patch16_224": (16, 768, 12, 12, 4.0, 384, 6),
    "pretrain_videomae_large_patch16_224": (16, 1024, 24, 16, 4.0, 512, 8),
    "pretrain_videomae_huge_patch16_224": (16, 1280, 32, 16, 4.0, 512, 8),
    "pretrain_videomae_giant_patch14_224": (14, 1408, 40, 16, 48 / 11, 512, 8),
}

_BLOCK_LEAVES = (
    "norm1.weight", "norm1.bias",
    "attn.q_bias", "attn.v_bias", "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias",
    "norm2.weight", "norm2.bias",
    "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
)


def official_key_set(enc_depth: int, dec_depth: int) -> set[str]:
    """The pretraining state_dict keys of section 4.3 for the given depths."""
    keys = {"encoder.patch_embed.proj.weight", "encoder.patch_embed.proj.bias",
            "encoder.norm.weight", "encoder.norm.bias",
            "decoder.norm.weight", "decoder.norm.bias", "decoder.head.weight", "decoder.head.bias",
            "encoder_to_decoder.weight", "mask_token"}
    for side, depth in (("encoder", enc_depth), ("decoder", dec_depth)):
        for i in range(depth):
            keys.update(f"{side}.blocks.{i}.{leaf}" for leaf in _BLOCK_LEAVES)
    return keys


# ---------------------------------------------------------------------------------------------------
# positional table (section 2.2)
# ---------------------------------------------------------------------------------------------------

def sinusoid_table(num_tokens: int, dim: int, layout: str = "interleaved") -> torch.Tensor:
    """``[1, N, d]`` float32. angle[n, i] = n / 10000**(2*(i//2)/d); even i -> sin, odd i -> cos.

    Built in float64 (numpy) and only then rounded to float32, like the official table.
    ``layout="halves"`` is a wrong variant (sin block then cos block) used by mutation tests.
    """
    pos = np.arange(num_tokens, dtype=np.float64)[:, None]
    i = np.arange(dim)
    freq = np.power(10000.0, 2 * (i // 2) / dim)
    angles = pos / freq[None, :]
    table = np.empty_like(angles)
    if layout == "interleaved":
        table[:, 0::2] = np.sin(angles[:, 0::2])
        table[:, 1::2] = np.cos(angles[:, 1::2])
    elif layout == "halves":
        half = (dim + 1) // 2
        table[:, :half] = np.sin(angles[:, 0::2])
        table[:, half:] = np.cos(angles[:, 1::2])
    else:
        raise ValueError(layout)
    return torch.from_numpy(table).to(torch.float32)[None]


# ---------------------------------------------------------------------------------------------------
# forward (sections 2.3 - 2.6)
# ---------------------------------------------------------------------------------------------------

def attention(x: torch.Tensor, qkv_weight, q_bias, v_bias, proj_weight, proj_bias, heads: int) -> torch.Tensor:
    """``[B, N, D] -> [B, N, D]``: qkv bias ``cat(q_bias, 0, v_bias)``, q pre-scaled, explicit softmax (the
    ``[B, heads, N, N]`` scores are materialised), then ``proj``."""
    b, n, d = x.shape
    hd = d // heads
    bias = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])  # k gets no bias
    qkv = F.linear(x, qkv_weight, bias)
    qkv = qkv.reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)  # [3, B, h, N, hd]
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * hd ** -0.5
    scores = q @ k.transpose(-2, -1)
    probs = scores.softmax(dim=-1)
    out = (probs @ v).transpose(1, 2).reshape(b, n, d)
    return F.linear(out, proj_weight, proj_bias)


def mlp(x: torch.Tensor, fc1_weight, fc1_bias, fc2_weight, fc2_bias, gelu: str = "none") -> torch.Tensor:
    """``fc2(GELU(fc1(x)))``; ``gelu="none"`` is the exact erf GELU (official)."""
    return F.linear(F.gelu(F.linear(x, fc1_weight, fc1_bias), approximate=gelu), fc2_weight, fc2_bias)


@dataclass
class Variant:
    """Knobs for mutation tests. The defaults are the official behaviour."""

    pos_layout: str = "interleaved"
    gelu: str = "none"            # F.gelu approximate=... ; "none" is the exact erf GELU
    ln_eps: float = LN_EPS
    decoder_order: str = "visible_first"   # or "mask_first" (wrong)


class OfficialPretrainOracle:
    """Functional VideoMAE V2 ``PretrainVisionTransformer`` on an official-format state_dict.

    ``params`` maps official key -> tensor. Tensors are used as given (so leaf tensors with
    ``requires_grad=True`` receive gradients). Head counts cannot be read off the weights and are passed.
    """

    def __init__(self, params: dict, num_heads: int, decoder_num_heads: int, *,
                 tubelet_size: int = TUBELET, variant: Variant | None = None):
        self.params = dict(params)
        self.num_heads = num_heads
        self.decoder_num_heads = decoder_num_heads
        self.tubelet = tubelet_size
        self.variant = variant or Variant()
        enc_depth = self._depth("encoder")
        dec_depth = self._depth("decoder")
        expected = official_key_set(enc_depth, dec_depth)
        got = set(self.params)
        if got != expected:
            raise KeyError(f"not an official pretraining state_dict: missing {sorted(expected - got)}, "
                           f"unexpected {sorted(got - expected)}")
        self.enc_depth, self.dec_depth = enc_depth, dec_depth
        w = self.params["encoder.patch_embed.proj.weight"]
        self.embed_dim, _, kt, self.patch, kw = w.shape
        assert kt == self.tubelet and kw == self.patch
        self.dec_dim = self.params["encoder_to_decoder.weight"].shape[0]

    def _depth(self, side: str) -> int:
        idx = {int(m.group(1)) for k in self.params for m in [re.match(rf"{side}\.blocks\.(\d+)\.", k)] if m}
        return max(idx) + 1 if idx else 0

    # -- pieces ----------------------------------------------------------------------------------

    def _ln(self, x, prefix):
        return F.layer_norm(x, (x.shape[-1],), self.params[prefix + ".weight"], self.params[prefix + ".bias"],
                            eps=self.variant.ln_eps)

    def _attention(self, x, prefix, heads):
        leaves = ("qkv.weight", "q_bias", "v_bias", "proj.weight", "proj.bias")
        return attention(x, *(self.params[f"{prefix}.{leaf}"] for leaf in leaves), heads)

    def _mlp(self, x, prefix):
        leaves = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
        return mlp(x, *(self.params[f"{prefix}.{leaf}"] for leaf in leaves), gelu=self.variant.gelu)

    def _block(self, x, prefix, heads):
        x = x + self._attention(self._ln(x, prefix + ".norm1"), prefix + ".attn", heads)
        x = x + self._mlp(self._ln(x, prefix + ".norm2"), prefix + ".mlp")
        return x

    def _pos(self, n, d, like):
        return sinusoid_table(n, d, self.variant.pos_layout).to(dtype=like.dtype, device=like.device)

    # -- encoder / full model ---------------------------------------------------------------------

    def encoder(self, video: torch.Tensor, enc_mask: torch.Tensor) -> torch.Tensor:
        """``[B, N_vis, D]`` (after the final LN)."""
        x = F.conv3d(video, self.params["encoder.patch_embed.proj.weight"], self.params["encoder.patch_embed.proj.bias"],
                     stride=(self.tubelet, self.patch, self.patch))
        x = x.flatten(2).transpose(1, 2)  # [B, N, D], (t, h, w) order
        b, n, c = x.shape
        x = x + self._pos(n, c, x)
        x = x[~enc_mask].reshape(b, -1, c)
        for i in range(self.enc_depth):
            x = self._block(x, f"encoder.blocks.{i}", self.num_heads)
        return self._ln(x, "encoder.norm")

    def __call__(self, video: torch.Tensor, enc_mask: torch.Tensor, dec_mask: torch.Tensor) -> torch.Tensor:
        """Predictions ``[B, N_dv, 3*tubelet*p*p]`` for the decoder-visible tokens (``~dec_mask``)."""
        assert enc_mask.dtype == torch.bool and dec_mask.dtype == torch.bool
        x_vis = F.linear(self.encoder(video, enc_mask), self.params["encoder_to_decoder.weight"])
        b, n = enc_mask.shape
        pos = self._pos(n, self.dec_dim, x_vis).expand(b, -1, -1)
        pos_vis = pos[~enc_mask].reshape(b, -1, self.dec_dim)
        pos_dec = pos[~dec_mask].reshape(b, -1, self.dec_dim)
        n_dv = pos_dec.shape[1]
        tok_vis = x_vis + pos_vis
        tok_mask = self.params["mask_token"] + pos_dec
        if self.variant.decoder_order == "visible_first":
            x = torch.cat([tok_vis, tok_mask], dim=1)
        elif self.variant.decoder_order == "mask_first":
            x = torch.cat([tok_mask, tok_vis], dim=1)
        else:
            raise ValueError(self.variant.decoder_order)
        for i in range(self.dec_depth):
            x = self._block(x, f"decoder.blocks.{i}", self.decoder_num_heads)
        tail = x[:, -n_dv:] if self.variant.decoder_order == "visible_first" else x[:, :n_dv]
        return F.linear(self._ln(tail, "decoder.norm"), self.params["decoder.head.weight"], self.params["decoder.head.bias"])
