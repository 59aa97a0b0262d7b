"""Building blocks shared by the pretraining and fine-tuning ViTs.

Parameter names, shapes and initialisation follow the official VideoMAE V2 modules so that
official state dicts load with ``strict=True``. Token order everywhere is ``(t, h, w)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vmae2.attention import AttentionModule, attention


def sinusoid_table(num_tokens: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sinusoid position table ``[num_tokens, dim]`` (float32) over the flat token index.

    ``angle[n, i] = n / 10000^(2*floor(i/2)/dim)``; even dims take ``sin``, odd dims ``cos``
    (interleaved). Computed in float64 like the official table, then stored as float32.
    """
    pos = torch.arange(num_tokens, dtype=torch.float64, device="cpu")[:, None]
    exponent = (2 * (torch.arange(dim, device="cpu") // 2)).to(torch.float64) / dim
    angle = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64, device="cpu"), exponent)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    # On the default device (e.g. inside ``with torch.device("cuda")``); kept on the CPU when building on meta.
    target = torch.get_default_device()
    return table.to(torch.float32).to(target if target.type != "meta" else "cpu")


def interpolate_pos_table(table: torch.Tensor, src_grid: tuple[int, int, int],
                          dst_grid: tuple[int, int, int]) -> torch.Tensor:
    """Resample a position table ``[t*h*w, D]`` laid out over ``src_grid`` (t, h, w) onto ``dst_grid``.

    Each spatial slice is resized bicubically (``align_corners=False``, as the official spatial path), then
    every spatial position is resized linearly along time. The official fine-tuning code instead reshapes the
    table of the *new* model assuming 8 temporal slices, which is wrong (and fails) for clips of T != 16
    frames; here the table the encoder was pretrained with is mapped onto the new grid, so each new token gets
    the embedding of the space-time location it covers. ``src_grid == dst_grid`` returns the table unchanged.
    """
    (ts, hs, ws), (td, hd, wd) = src_grid, dst_grid
    if table.ndim != 2 or table.shape[0] != ts * hs * ws:
        raise ValueError(f"position table of shape {tuple(table.shape)} does not cover the grid {src_grid} "
                         f"({ts * hs * ws} tokens)")
    if tuple(src_grid) == tuple(dst_grid):
        return table.clone()
    dim = table.shape[1]
    x = table.to(torch.float64).reshape(ts, hs, ws, dim).permute(0, 3, 1, 2)  # [t, D, h, w]
    if (hs, ws) != (hd, wd):
        x = F.interpolate(x, size=(hd, wd), mode="bicubic", align_corners=False)
    x = x.permute(2, 3, 1, 0).reshape(hd * wd, dim, ts)  # [h*w, D, t]
    if ts != td:
        x = F.interpolate(x, size=td, mode="linear", align_corners=False)
    return x.reshape(hd, wd, dim, td).permute(3, 0, 1, 2).reshape(td * hd * wd, dim).to(table.dtype)


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
    """Linear stochastic-depth schedule ``linspace(0, max_rate, depth)`` (float32 steps, as timm)."""
    return torch.linspace(0, max_rate, depth, device="cpu").tolist()


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample: zero whole residual branches with probability ``p``."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


class DropPath(nn.Module):
    """Stochastic depth: each sample's residual branch dropped with probability ``drop_prob`` while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def check_geometry(img_size: int, num_frames: int, tubelet_size: int, patch_size: int) -> None:
    """Raise ``ValueError`` unless frames split into tubelets and the image into patches."""
    if num_frames < 1 or tubelet_size < 1 or num_frames % tubelet_size:
        raise ValueError(f"num_frames {num_frames} must be a positive multiple of tubelet_size {tubelet_size}")
    if img_size < patch_size or img_size % patch_size:
        raise ValueError(f"img_size {img_size} must be a positive multiple of patch_size {patch_size}")


class PatchEmbed(nn.Module):
    """Tubelet embedding: ``[B, 3, T, H, W] -> [B, T'*H'*W', D]`` with a strided Conv3d."""

    def __init__(self, img_size: int, patch_size: int, num_frames: int, tubelet_size: int, embed_dim: int):
        super().__init__()
        self.img_size, self.patch_size = img_size, patch_size
        self.num_frames, self.tubelet_size = num_frames, tubelet_size
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.num_patches = math.prod(self.grid)
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(3, embed_dim, kernel_size=kernel, stride=kernel)

    def check_input(self, video: torch.Tensor) -> None:
        expected = (3, self.num_frames, self.img_size, self.img_size)
        if video.ndim != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(
                f"video has shape {tuple(video.shape)}; this model expects [B, {expected[0]}, {expected[1]}, "
                f"{expected[2]}, {expected[3]}] (channels, frames, height, width). Build the model with "
                f"num_frames/img_size matching your clips, or resize the clips.")

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        self.check_input(video)
        return self.proj(video).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(AttentionModule):
    """Joint space-time multi-head self-attention with the official q/v-only bias.

    ``qkv`` is one bias-free Linear; the effective bias is ``cat(q_bias, 0, v_bias)``. The score
    scale is ``head_dim ** -0.5``. ``backend`` picks the kernel (see :mod:`vmae2.attention`).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, backend: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, num_query: int | None = None) -> torch.Tensor:
        """``x [B, N, C]`` -> ``[B, N, C]``; with ``num_query`` only the last ``num_query`` tokens query (keys and
        values from all ``N``) -> ``[B, num_query, C]``."""
        B, N, C = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(B, N, 3, self.num_heads, self.head_dim)
        out = attention(qkv, self.scale, self.backend, num_query)  # [B, Nq, heads, head_dim]
        return self.proj(out.reshape(B, out.shape[1], C))


class Block(nn.Module):
    """Pre-norm transformer block; optional layer scale (``init_values > 0``) as in the official code."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, drop_path: float = 0.0,
                 init_values: float = 0.0, qkv_bias: bool = True, backend: str = "auto"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, backend=backend)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_hidden)
        if init_values > 0:
            self.gamma_1 = nn.Parameter(init_values * torch.ones(dim))
            self.gamma_2 = nn.Parameter(init_values * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor, recompute: str = "none", num_query: int | None = None) -> torch.Tensor:
        """``recompute`` ``"attn"`` / ``"mlp"``: that residual branch keeps only its input for backward and runs
        again there (activation checkpointing of one sub-block); ``"none"``: every activation is kept.
        ``num_query``: only the last ``num_query`` tokens are computed (they attend to all tokens) ->
        ``[B, num_query, C]``; the rows the caller drops afterwards are never computed."""
        y = (_checkpointed(self.attn_branch, x, num_query) if recompute == "attn" else self.attn_branch(x, num_query))
        x = (x if num_query is None else x[:, -num_query:]) + y
        return x + (_checkpointed(self.mlp_branch, x) if recompute == "mlp" else self.mlp_branch(x))

    def attn_branch(self, x: torch.Tensor, num_query: int | None = None) -> torch.Tensor:
        y = self.attn(self.norm1(x), num_query)
        return self.drop_path(y if self.gamma_1 is None else self.gamma_1 * y)

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm2(x))
        return self.drop_path(y if self.gamma_2 is None else self.gamma_2 * y)


def make_blocks(dim: int, num_heads: int, mlp_ratio: float, depth: int, drop_path_rate: float,
                init_values: float = 0.0, backend: str = "auto") -> nn.ModuleList:
    """``depth`` blocks with the linear stochastic-depth schedule and MLP width ``int(dim * mlp_ratio)``."""
    hidden = int(dim * mlp_ratio)
    return nn.ModuleList(Block(dim, num_heads, hidden, drop_path=r, init_values=init_values, backend=backend)
                         for r in drop_path_rates(drop_path_rate, depth))


def _checkpointed(fn, *args) -> torch.Tensor:
    """``fn(*args)`` keeping only the arguments for backward, where ``fn`` runs again (non-reentrant; RNG state
    restored, so drop path draws the same)."""
    return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, checkpoint: str = "none",
               num_output: int | None = None) -> torch.Tensor:
    """Apply ``blocks`` in order, recomputing in backward what the activation-checkpointing mode ``checkpoint`` says
    (canonical, see :func:`vmae2.models.configs.checkpoint_mode`): ``full`` every block, ``every:K`` blocks 0, K,
    2K, ... whole, ``attn`` / ``mlp`` that branch of every block. Without grad nothing is recomputed.
    ``num_output``: only the last ``num_output`` tokens are returned, and the last block computes only those."""
    mode = checkpoint if torch.is_grad_enabled() else "none"
    every = 1 if mode == "full" else int(mode[len("every:"):]) if mode.startswith("every:") else 0
    branch = mode if mode in ("attn", "mlp") else "none"
    for i, blk in enumerate(blocks):
        nq = num_output if i == len(blocks) - 1 else None
        x = _checkpointed(blk, x, "none", nq) if every and i % every == 0 else blk(x, branch, nq)
    if num_output is not None and not len(blocks):
        x = x[:, -num_output:]
    return x


def init_xavier(module: nn.Module) -> None:
    """Pretraining init: Linear xavier-uniform (fused qkv as one matrix), bias 0; LayerNorm 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_trunc_normal(module: nn.Module) -> None:
    """Fine-tuning init: Linear truncated normal (std 0.02, bounds +-2), bias 0; LayerNorm 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
