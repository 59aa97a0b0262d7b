"""An independent, functional re-statement of the official VideoMAE V2 pretraining forward and loss.

Written only from the behaviour described in the project's reference notes on the official VideoMAE V2 code
(sections 1-4); it does not import or mirror any vmae2 model/loss code. Everything is plain functional
torch / numpy on an official-format ``state_dict`` (``encoder.blocks.0.attn.qkv.weight``, ``mask_token``, ...),
so it can be fed the weights of the implementation under test.

Conventions (as in the official code): masks are ``[B, N]`` bool, ``True`` = masked / dropped,
tokens flattened ``n = t*H'*W' + h*W' + w``.

A few keyword switches (``pos_layout``, ``gelu``, ``ln_eps``, ``decoder_order`` and the loss options)
select deliberately *wrong* variants. They exist only so the tests can show that the comparison would
notice such a deviation; the defaults are the official behaviour.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TUBELET = 2

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

@dataclass
class Variant:
    """Knobs for mutation tests. The defaults are the official behaviour."""

    pos_layout: str = "interleaved"
    gelu: str = "none"            # F.gelu approximate=... ; "none" is the exact erf GELU
    ln_eps: float = 1e-6
    decoder_order: str = "visible_first"   # or "mask_first" (wrong)


class OfficialPretrainOracle:
    """Functional VideoMAE V2 ``PretrainVisionTransformer`` on an official-format state_dict.

    ``params`` maps official key -> tensor. Tensors are used as given (so leaf tensors with
    ``requires_grad=True`` receive gradients). Head counts cannot be read off the weights and are passed.
    """

    def __init__(self, params: dict, num_heads: int, decoder_num_heads: int, *,
                 tubelet_size: int = TUBELET, variant: Variant | None = None):
        self.p = dict(params)
        self.num_heads = num_heads
        self.decoder_num_heads = decoder_num_heads
        self.tubelet = tubelet_size
        self.v = variant or Variant()
        enc_depth = self._depth("encoder")
        dec_depth = self._depth("decoder")
        expected = official_key_set(enc_depth, dec_depth)
        got = set(self.p)
        if got != expected:
            raise KeyError(f"not an official pretraining state_dict: missing {sorted(expected - got)}, "
                           f"unexpected {sorted(got - expected)}")
        self.enc_depth, self.dec_depth = enc_depth, dec_depth
        w = self.p["encoder.patch_embed.proj.weight"]
        self.embed_dim, _, kt, self.patch, kw = w.shape
        assert kt == self.tubelet and kw == self.patch
        self.dec_dim = self.p["encoder_to_decoder.weight"].shape[0]

    def _depth(self, side: str) -> int:
        idx = {int(m.group(1)) for k in self.p for m in [re.match(rf"{side}\.blocks\.(\d+)\.", k)] if m}
        return max(idx) + 1 if idx else 0

    # -- pieces ----------------------------------------------------------------------------------

    def _ln(self, x, prefix):
        return F.layer_norm(x, (x.shape[-1],), self.p[prefix + ".weight"], self.p[prefix + ".bias"],
                            eps=self.v.ln_eps)

    def _attention(self, x, prefix, heads):
        b, n, d = x.shape
        hd = d // heads
        q_bias = self.p[prefix + ".q_bias"]
        v_bias = self.p[prefix + ".v_bias"]
        bias = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])  # k gets no bias
        qkv = F.linear(x, self.p[prefix + ".qkv.weight"], bias)
        qkv = qkv.reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)  # [3, B, h, N, hd]
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * hd ** -0.5
        scores = q @ k.transpose(-2, -1)
        probs = scores.softmax(dim=-1)
        out = (probs @ v).transpose(1, 2).reshape(b, n, d)
        return F.linear(out, self.p[prefix + ".proj.weight"], self.p[prefix + ".proj.bias"])

    def _mlp(self, x, prefix):
        h = F.linear(x, self.p[prefix + ".fc1.weight"], self.p[prefix + ".fc1.bias"])
        h = F.gelu(h, approximate=self.v.gelu)
        return F.linear(h, self.p[prefix + ".fc2.weight"], self.p[prefix + ".fc2.bias"])

    def _block(self, x, prefix, heads):
        x = x + self._attention(self._ln(x, prefix + ".norm1"), prefix + ".attn", heads)
        x = x + self._mlp(self._ln(x, prefix + ".norm2"), prefix + ".mlp")
        return x

    def _pos(self, n, d, like):
        return sinusoid_table(n, d, self.v.pos_layout).to(dtype=like.dtype, device=like.device)

    # -- encoder / full model ---------------------------------------------------------------------

    def encoder(self, video: torch.Tensor, enc_mask: torch.Tensor) -> torch.Tensor:
        """``[B, N_vis, D]`` (after the final LN)."""
        x = F.conv3d(video, self.p["encoder.patch_embed.proj.weight"], self.p["encoder.patch_embed.proj.bias"],
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
        x_vis = F.linear(self.encoder(video, enc_mask), self.p["encoder_to_decoder.weight"])
        b, n = enc_mask.shape
        pos = self._pos(n, self.dec_dim, x_vis).expand(b, -1, -1)
        pos_vis = pos[~enc_mask].reshape(b, -1, self.dec_dim)
        pos_dec = pos[~dec_mask].reshape(b, -1, self.dec_dim)
        n_dv = pos_dec.shape[1]
        tok_vis = x_vis + pos_vis
        tok_mask = self.p["mask_token"] + pos_dec
        if self.v.decoder_order == "visible_first":
            x = torch.cat([tok_vis, tok_mask], dim=1)
        elif self.v.decoder_order == "mask_first":
            x = torch.cat([tok_mask, tok_vis], dim=1)
        else:
            raise ValueError(self.v.decoder_order)
        for i in range(self.dec_depth):
            x = self._block(x, f"decoder.blocks.{i}", self.decoder_num_heads)
        tail = x[:, -n_dv:] if self.v.decoder_order == "visible_first" else x[:, :n_dv]
        return F.linear(self._ln(tail, "decoder.norm"), self.p["decoder.head.weight"], self.p["decoder.head.bias"])


# ---------------------------------------------------------------------------------------------------
# loss (section 3)
# ---------------------------------------------------------------------------------------------------

def to_patches(video: torch.Tensor, patch: int, tubelet: int = TUBELET) -> torch.Tensor:
    """``b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c`` with reshape/permute."""
    b, c, t, h, w = video.shape
    x = video.reshape(b, c, t // tubelet, tubelet, h // patch, patch, w // patch, patch)
    # dims: 0 b, 1 c, 2 t', 3 p0, 4 h', 5 p1, 6 w', 7 p2
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(b, (t // tubelet) * (h // patch) * (w // patch), tubelet * patch * patch, c)


def official_loss(pred: torch.Tensor, video: torch.Tensor, enc_mask: torch.Tensor, dec_mask: torch.Tensor,
                  patch: int, tubelet: int = TUBELET, *, unbiased: bool = True, eps_in_sqrt: bool = False,
                  reduction: str = "global", weights: str = "encoder_masked") -> torch.Tensor:
    """The engine's loss. Non-default keyword values are wrong variants for mutation tests."""
    with torch.no_grad():
        mean = torch.tensor(IMAGENET_MEAN, dtype=video.dtype, device=video.device)[None, :, None, None, None]
        std = torch.tensor(IMAGENET_STD, dtype=video.dtype, device=video.device)[None, :, None, None, None]
        u = video * std + mean
        s = to_patches(u, patch, tubelet)  # [B, N, P', 3]
        npix = s.shape[-2]
        mu = s.sum(dim=-2, keepdim=True) / npix
        ss = ((s - mu) ** 2).sum(dim=-2, keepdim=True)
        var = ss / (npix - 1) if unbiased else ss / npix
        denom = torch.sqrt(var + 1e-6) if eps_in_sqrt else torch.sqrt(var) + 1e-6
        s = (s - mu) / denom
        target = s.reshape(s.shape[0], s.shape[1], -1)  # (p c), channel fastest
        b, _, pdim = target.shape
        labels = target[~dec_mask].reshape(b, -1, pdim)
    per_token = ((pred - labels) ** 2).mean(dim=-1)  # [B, N_dv]
    if weights == "encoder_masked":
        w = enc_mask[~dec_mask].reshape(b, -1).to(per_token.dtype)
    elif weights == "all":
        w = torch.ones_like(per_token)
    else:
        raise ValueError(weights)
    if reduction == "global":
        return (per_token * w).sum() / w.sum()
    if reduction == "per_sample":
        return ((per_token * w).sum(1) / w.sum(1)).mean()
    raise ValueError(reduction)


# ---------------------------------------------------------------------------------------------------
# mask generators, re-typed in numpy (section 1.2, 1.3)
# ---------------------------------------------------------------------------------------------------

class TubeGenerator:
    """Official tube masking: one shuffled frame vector tiled over T'. Output float64 ``(T', H'W')``."""

    def __init__(self, grid, ratio: float):
        self.frames, h, w = grid
        self.num_patches_per_frame = h * w
        self.num_masks_per_frame = int(ratio * h * w)

    def unshuffled_frame(self) -> np.ndarray:
        return np.hstack([np.zeros(self.num_patches_per_frame - self.num_masks_per_frame),
                          np.ones(self.num_masks_per_frame)])

    def shuffled_frame(self, rng: np.random.Generator) -> np.ndarray:
        v = self.unshuffled_frame()
        rng.shuffle(v)
        return v

    def from_frame(self, frame_vector: np.ndarray) -> np.ndarray:
        """The generator's output once the per-sample shuffled frame vector is injected."""
        frame_vector = np.asarray(frame_vector, dtype=np.float64)
        assert frame_vector.shape == (self.num_patches_per_frame,)
        return np.tile(frame_vector, (self.frames, 1))


class _Cell:
    def __init__(self, num_masks: int, num_patches: int = 4):
        self.num_masks = num_masks
        self.size = num_patches
        self.queue = np.hstack([np.ones(num_masks), np.zeros(num_patches - num_masks)])
        self.ptr = 0

    def set_ptr(self, pos: int):
        self.ptr = pos

    def get_cell(self) -> np.ndarray:
        return self.queue[(np.arange(self.size) + self.ptr) % self.size]

    def run_cell(self):
        self.ptr += 1


class RunningCellGenerator:
    """Official running-cell decoder masking, pre-computed by the literal ptr/queue procedure."""

    def __init__(self, grid, ratio: float):
        self.frames, self.height, self.width = grid
        num_masks_per_cell = int(4 * ratio)
        assert 0 < num_masks_per_cell < 4
        self.cell = _Cell(num_masks_per_cell, 4)
        maps = []
        for ptr_pos in range(4):
            self.cell.set_ptr(ptr_pos)
            per_frame = []
            for _ in range(self.frames):
                self.cell.run_cell()
                unit = self.cell.get_cell().reshape(2, 2)
                per_frame.append(np.tile(unit, [self.height // 2, self.width // 2]).flatten())
            maps.append(np.stack(per_frame, axis=0))
        self.all_mask_maps = np.stack(maps, axis=0)  # (4, T', H'W') float64

    def row(self, index: int) -> np.ndarray:
        """``__call__`` with the random row index injected."""
        return self.all_mask_maps[index].copy()


def batch_masks(maps) -> torch.Tensor:
    """Engine step: ``mask.flatten(1).to(torch.bool)`` on a stack of per-sample ``(T', H'W')`` maps."""
    return torch.from_numpy(np.stack(maps, axis=0)).flatten(1).to(torch.bool)


def visible_ids(mask: torch.Tensor) -> torch.Tensor:
    """Ascending indices of the ``False`` entries of each row (equal count per row), ``[B, K]`` int64."""
    b = mask.shape[0]
    rows, cols = torch.nonzero(~mask, as_tuple=True)
    assert torch.equal(rows, torch.arange(b).repeat_interleave((~mask).sum(1)))
    return cols.reshape(b, -1)
