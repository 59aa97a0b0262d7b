"""One VideoMAE V2 pretraining step done the way the official code does it, and the same step done by vmae2.

This is the baseline of ``test_step_benchmarks.py``. It is a re-statement, written from the behaviour described
in the project's reference notes on the official VideoMAE V2 code (sections 2, 3 and 5), not a copy: the modules carry the
official parameter names, so ``PretrainVisionTransformer.state_dict()`` of vmae2 loads into
:class:`OfficialPretrainModel` with ``strict=True``, and the step follows the official engine:

* encoder: Conv3d patch embedding of all N tokens, the fixed sinusoid table added to **all** N tokens (the table
  is a plain CPU attribute, converted and copied to the device at every forward), then the boolean gather
  ``x[~mask].reshape(B, -1, C)``;
* attention: ``qkv`` Linear with the bias ``cat(q_bias, 0, v_bias)``, ``q * scale @ k^T``, softmax, ``@ v``
  (the N x N score matrix is materialised), then ``proj``; dropout modules with p = 0;
* decoder input: the decoder table expanded to ``[B, N, D_dec]``, cast like the *video* (fp32) and cloned, then two
  boolean gathers (encoder-visible and decoder-visible positions) and ``cat([x_vis + pos_vis, mask_token +
  pos_dec])``; output ``head(norm(x[:, -N_dv:]))``;
* loss: the fp32 normalised target built for **all** N patches (unbiased std, 1e-6 added to the std, feature
  layout ``(p0 p1 p2 c)``) outside autocast, labels picked with ``[~dec_mask]``, per-token MSE, weights
  ``enc_mask[~dec_mask]``, one global weighted mean;
* step: ``loss.item()`` and a finiteness check (a host sync, as in the engine), ``zero_grad``, backward (through a
  GradScaler under fp16), the total gradient norm, AdamW with the official two parameter groups.

Under ``bf16``/``fp16`` the forward and the loss run in ``torch.autocast`` (activations low precision, target
fp32), as the official engine does with ``torch.cuda.amp.autocast()``; fp16 adds the GradScaler, bf16 does not
need one (the official pretraining only ever ran fp16).

:class:`Vmae2Step` is the same step through vmae2's hot path (ids instead of bool masks, fused token ops and loss,
the attention backend vmae2 picks), mirroring the inner loop of ``vmae2.train`` for one micro-batch.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vmae2 import attention, masking
from vmae2.models import create_model
from vmae2.flops import model_flops_per_clip
from vmae2.runtime import clip_or_norm
from vmae2_kernels import dispatch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

__all__ = ["OfficialPretrainModel", "OfficialStep", "Vmae2Step", "official_from_vmae2", "official_param_groups",
           "official_optimizer", "vmae2_optimizer", "official_targets", "official_loss", "total_grad_norm",
           "autocast_for", "PRECISIONS", "Size", "SIZES", "make_step"]


# -- model ----------------------------------------------------------------------------------------------------

def sinusoid_table(num_tokens: int, dim: int) -> torch.Tensor:
    """``[1, N, dim]`` float32 on the CPU: ``n / 10000^(2*floor(i/2)/dim)``, sin on even dims, cos on odd ones,
    evaluated in float64 numpy (as the official helper does)."""
    n = np.arange(num_tokens, dtype=np.float64)[:, None]
    i = np.arange(dim)[None, :]
    angles = n / np.power(10000.0, 2 * (i // 2) / dim)
    table = np.where(i % 2 == 0, np.sin(angles), np.cos(angles))
    return torch.tensor(table, dtype=torch.float32)[None]


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
    """Explicit softmax attention with the q/v-only bias: materialises the ``[B, heads, N, N]`` scores."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        k_bias = torch.zeros_like(self.v_bias, requires_grad=False)
        qkv = F.linear(x, self.qkv.weight, torch.cat((self.q_bias, k_bias, self.v_bias)))
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        scores = (q * self.scale) @ k.transpose(-2, -1)
        probs = self.attn_drop(scores.softmax(dim=-1))
        out = (probs @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm block, LayerNorm eps 1e-6, no layer scale, drop-path 0 (an Identity)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.drop_path = nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, with_cp: bool) -> torch.Tensor:
    for blk in blocks:
        # The official code calls torch.utils.checkpoint.checkpoint(blk, x), whose old default was reentrant.
        x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=True) if with_cp else blk(x)
    return x


class Encoder(nn.Module):
    def __init__(self, img_size, patch_size, num_frames, tubelet_size, dim, depth, num_heads, mlp_ratio, with_cp):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, num_frames, tubelet_size, dim)
        self.pos_embed = sinusoid_table(self.patch_embed.num_patches, dim)  # plain attribute: not in state_dict
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
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
        self.norm = nn.LayerNorm(dim, eps=1e-6)
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
            with_cp=model.encoder.use_checkpoint if with_cp is None else with_cp)
    # The tables stay CPU attributes, as in the official code (torch.device() above also placed them on device).
    official.encoder.pos_embed = official.encoder.pos_embed.cpu()
    official.pos_embed = official.pos_embed.cpu()
    official.load_state_dict(model.state_dict(), strict=True)
    return official


# -- optimizer ------------------------------------------------------------------------------------------------

def official_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The official factory's two groups: no decay for 1-D parameters, names ending ``.bias`` / ``.scale`` and the
    names in ``model.no_weight_decay()``; decay for everything else."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim == 1 or name.endswith(".bias") or name.endswith(".scale") or name in skip
        (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def official_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.05, betas=(0.9, 0.95),
                       eps: float = 1e-8) -> torch.optim.AdamW:
    return torch.optim.AdamW(official_param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps,
                             weight_decay=0.0)


def total_grad_norm(parameters) -> torch.Tensor:
    """The engine's gradient norm when no clipping is asked: L2 norm of the per-parameter L2 norms."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    return torch.norm(torch.stack([torch.norm(g.detach(), 2.0) for g in grads]), 2.0)


# -- loss -----------------------------------------------------------------------------------------------------

def official_targets(video: torch.Tensor, patch_size: int, tubelet_size: int = 2,
                     normalize: bool = True) -> torch.Tensor:
    """fp32 targets for **all** N patches ``[B, N, tubelet*p*p*3]`` (layout ``(p0 p1 p2 c)``), no grad."""
    with torch.no_grad():
        mean = torch.as_tensor(IMAGENET_MEAN).to(video.device)[None, :, None, None, None]
        std = torch.as_tensor(IMAGENET_STD).to(video.device)[None, :, None, None, None]
        pixels = video * std + mean
        B, C, T, H, W = pixels.shape
        t, h, w, p = T // tubelet_size, H // patch_size, W // patch_size, patch_size
        patches = pixels.reshape(B, C, t, tubelet_size, h, p, w, p).permute(0, 2, 4, 6, 3, 5, 7, 1)
        patches = patches.reshape(B, t * h * w, tubelet_size * p * p, C)
        if normalize:
            centred = patches - patches.mean(dim=-2, keepdim=True)
            patches = centred / (patches.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
        return patches.reshape(B, t * h * w, -1)


def official_loss(outputs: torch.Tensor, labels: torch.Tensor, enc_mask: torch.Tensor,
                  dec_mask: torch.Tensor) -> torch.Tensor:
    """Per-token MSE weighted by ``enc_mask[~dec_mask]`` (1 = encoder-masked), one global mean over the batch."""
    per_token = ((outputs - labels) ** 2).mean(dim=-1)
    weights = enc_mask[~dec_mask].reshape(outputs.shape[0], -1)
    return (per_token * weights).sum() / weights.sum()


def autocast_for(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


# -- the two steps --------------------------------------------------------------------------------------------

class OfficialStep:
    """One official-style training step on fixed inputs: ``step()`` (timed) or ``forward_loss()`` (tests).

    ``enc_mask [B, N]`` / ``dec_mask [B, N]`` are bool on the device (True = dropped / not reconstructed), as the
    official engine receives them. ``dec_mask=None`` reconstructs every encoder-masked token (VideoMAE v1).
    """

    def __init__(self, model: OfficialPretrainModel, optimizer: torch.optim.Optimizer, video: torch.Tensor,
                 enc_mask: torch.Tensor, dec_mask: torch.Tensor | None, precision: str = "fp32"):
        self.model, self.optimizer, self.video = model, optimizer, video
        self.enc_mask = enc_mask
        self.dec_mask = ~enc_mask if dec_mask is None else dec_mask  # the engine's v1 convention
        self.precision = precision
        self.scaler = torch.amp.GradScaler(video.device.type) if precision == "fp16" else None
        self.last_grad_norm = None

    def forward_loss(self) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        target = official_targets(self.video, m.patch_size, m.tubelet_size)  # outside autocast: fp32
        B, _, P = target.shape
        labels = target[~self.dec_mask].reshape(B, -1, P)
        with autocast_for(self.video.device, self.precision):
            outputs = m(self.video, self.enc_mask, self.dec_mask)
            loss = official_loss(outputs, labels, self.enc_mask, self.dec_mask)
        return outputs, loss

    def step(self) -> float:
        """One step; returns the loss value (read on the host, as the engine does)."""
        _, loss = self.forward_loss()
        value = loss.item()  # the engine logs every step: a host sync between forward and backward
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value}")
        self.optimizer.zero_grad()
        params = list(self.model.parameters())
        if self.scaler is None:
            loss.backward()
            self.last_grad_norm = total_grad_norm(params)
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            self.last_grad_norm = total_grad_norm(params)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scaler.get_scale()  # the engine logs the loss scale: another sync
        return value


def vmae2_optimizer(model, lr: float, weight_decay: float = 0.05, betas=(0.9, 0.95),
                    eps: float = 1e-8) -> torch.optim.AdamW:
    """The optimizer ``vmae2.train`` builds."""
    from vmae2.runtime import build_optimizer

    return build_optimizer(model, lr, weight_decay, betas, eps)


class Vmae2Step:
    """One vmae2 training step on fixed inputs, as ``vmae2.train`` runs a micro-batch (no accumulation).

    ``enc_ids [B, Nv]`` / ``dec_ids [B, Nd]`` are the ascending kept ids (``dec_ids=None``: VideoMAE v1).
    """

    def __init__(self, model, optimizer: torch.optim.Optimizer, video: torch.Tensor, enc_ids: torch.Tensor,
                 dec_ids: torch.Tensor | None, precision: str = "fp32", kernel_backend: str = "auto"):
        self.model, self.optimizer, self.video = model, optimizer, video
        self.enc_ids, self.dec_ids = enc_ids, dec_ids
        self.precision, self.kernel_backend = precision, kernel_backend
        self.scaler = torch.amp.GradScaler(video.device.type) if precision == "fp16" else None
        self.loss_sum = torch.zeros((), device=video.device)  # train.py's device-side accumulators (no sync)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=video.device)
        self.last_grad_norm = None

    def forward_loss(self) -> tuple[torch.Tensor, torch.Tensor]:
        from vmae2.loss import reconstruction_loss

        m = self.model
        with autocast_for(self.video.device, self.precision):
            pred = m(self.video, self.enc_ids, self.dec_ids)
            loss = reconstruction_loss(pred, self.video, self.enc_ids, self.dec_ids, patch_size=m.patch_size,
                                       tubelet_size=m.tubelet_size, backend=self.kernel_backend)
        return pred, loss

    def step(self) -> torch.Tensor:
        """One step; returns the loss (detached, not read: no host sync)."""
        _, loss = self.forward_loss()
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        self.loss_sum += loss.detach()
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss.detach()), 0, self.first_bad)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        self.last_grad_norm = clip_or_norm(self.model.parameters(), None)  # as vmae2.train (no clipping)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


# -- the compared steps on seeded inputs (built outside any timed region) ----------------------------------

ENC_RATIO, DEC_RATIO = 0.9, 0.5
LR, WEIGHT_DECAY = 1.5e-4, 0.05


@dataclass(frozen=True)
class Size:
    name: str
    model: str
    checkpoint: bool  # activation checkpointing, as the official scripts of this size


SIZES = [Size("ViT-S", "pretrain_videomae_small_patch16_224", False),
         Size("ViT-B", "pretrain_videomae_base_patch16_224", False),
         Size("ViT-L", "pretrain_videomae_large_patch16_224", False),
         Size("ViT-H", "pretrain_videomae_huge_patch16_224", True),
         Size("ViT-g", "pretrain_videomae_giant_patch14_224", True)]


def build_model(size: Size, device: torch.device):
    """vmae2 model with a fixed seed: every arm of a size starts from the same weights."""
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device (fast for ViT-g); the position tables are made on the
        model = create_model(size.model, use_checkpoint=size.checkpoint)  # CPU whatever the context: .to() below
    return model.to(device).train()


def build_inputs(model, batch: int, device: torch.device):
    """Clip batch ``[B, 3, 16, 224, 224]`` fp32, tube encoder ids (0.9) and running-cell decoder ids (0.5)."""
    g = torch.Generator().manual_seed(1)
    video = torch.randn(batch, 3, 16, 224, 224, generator=g).to(device)
    enc_ids = masking.tube_ids(batch, model.grid, ENC_RATIO, generator=g).to(device)
    dec_ids = masking.running_cell_ids(batch, model.grid, DEC_RATIO, generator=g).to(device)
    return video, enc_ids, dec_ids


def make_step(arm: str, size: Size, precision: str, batch: int, device: torch.device):
    """``(step object, facts)`` of ``arm`` (``official``, ``vmae2``/``dual``, ``v1``): facts = attention, token ops,
    tokens and model TFLOP per step."""
    model = build_model(size, device)
    video, enc_ids, dec_ids = build_inputs(model, batch, device)
    N, nv = model.num_patches, enc_ids.shape[1]
    nd = N - nv if arm == "v1" else dec_ids.shape[1]
    facts = dict(encoder_tokens=nv, decoded_tokens=nd, decoder_seq_len=nv + nd,
                 model_tflop_per_step=model_flops_per_clip(model, nv, nd) * batch / 1e12)
    if arm == "official":
        official = official_from_vmae2(model)
        enc_mask, dec_mask = masking.ids_to_mask(enc_ids, N), masking.ids_to_mask(dec_ids, N)
        del model
        step = OfficialStep(official, official_optimizer(official, LR, WEIGHT_DECAY), video, enc_mask, dec_mask,
                            precision)
        return step, dict(facts, attention="official explicit softmax", token_ops="boolean indexing")
    step = Vmae2Step(model, vmae2_optimizer(model, LR, WEIGHT_DECAY), video, enc_ids,
                     None if arm == "v1" else dec_ids, precision)
    amp = PRECISIONS[precision] or torch.float32
    attn = ", ".join(sorted({e["backend"] for e in attention.explain(model, device, amp)}))
    return step, dict(facts, attention=attn, token_ops=dispatch.choose("decoder_input", device.type))
