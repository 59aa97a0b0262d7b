"""VideoMAE V2 pretraining model: tube-masked encoder + running-cell-masked decoder.

``state_dict()`` keys equal the official ``PretrainVisionTransformer`` keys. Visible tokens are gathered
by sorted ids, never by boolean indexing, so the ids path has no host sync and no graph break.
"""
from __future__ import annotations

import torch
from torch import nn

import vmae2_kernels
from vmae2.masking import dual_ids
from vmae2.models.configs import ViTConfig, checkpoint_mode
from vmae2.models.layers import PatchEmbed, check_geometry, init_xavier, make_blocks, run_blocks, sinusoid_table


EMBED_TOKENS = ("visible", "all")
DECODER_ROWS = ("predicted", "all")


class PretrainEncoder(nn.Module):
    """Patch embedding + fixed sinusoid position + blocks + LayerNorm over the encoder-visible tokens.

    ``embed_tokens``: ``visible`` embeds only the encoder-visible tubelets (:func:`vmae2_kernels.patch_embed`: the
    same per-token arithmetic as the Conv3d, about 90% fewer embedding FLOPs at mask ratio 0.9); ``all`` is the
    official order: Conv3d over every tubelet, then keep the visible tokens. Same parameters and keys either way.
    """

    def __init__(self, cfg: ViTConfig, img_size: int, num_frames: int, tubelet_size: int, drop_path_rate: float,
                 use_checkpoint: str, attn_backend: str, kernel_backend: str, embed_tokens: str = "visible"):
        super().__init__()
        if embed_tokens not in EMBED_TOKENS:
            raise ValueError(f"embed_tokens {embed_tokens!r} is invalid: choose one of {EMBED_TOKENS}")
        self.kernel_backend, self.embed_tokens = kernel_backend, embed_tokens
        self.patch_embed = PatchEmbed(img_size, cfg.patch_size, num_frames, tubelet_size, cfg.embed_dim)
        self.register_buffer("pos_embed", sinusoid_table(self.patch_embed.num_patches, cfg.embed_dim),
                             persistent=False)
        self.blocks = make_blocks(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.depth, drop_path_rate,
                                  backend=attn_backend)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.use_checkpoint = use_checkpoint
        self.apply(init_xavier)

    def forward(self, video: torch.Tensor, vis_ids: torch.Tensor) -> torch.Tensor:
        """``video [B, 3, T, H, W]``, ``vis_ids [B, Nv]`` -> ``[B, Nv, D]``."""
        if self.embed_tokens == "visible":
            self.patch_embed.check_input(video)
            proj = self.patch_embed.proj
            x = vmae2_kernels.patch_embed(video, vis_ids, proj.weight, proj.bias, self.pos_embed,
                                          backend=self.kernel_backend)
        else:  # official: embed and add pos to all N tokens, then drop (gathering before the add is the same)
            x = vmae2_kernels.token_gather(self.patch_embed(video), vis_ids, self.pos_embed,
                                           backend=self.kernel_backend)
        return self.norm(run_blocks(self.blocks, x, self.use_checkpoint))


class PretrainDecoder(nn.Module):
    """Blocks + LayerNorm + linear pixel head; predicts the last ``num_predict`` tokens.

    ``rows``: ``predicted`` computes only those tokens in the last block (their queries attend to every token; the
    same per-row arithmetic); ``all`` is the official order: every row of every block, then keep the predicted ones.
    """

    def __init__(self, cfg: ViTConfig, depth: int, out_dim: int, drop_path_rate: float, use_checkpoint: str,
                 attn_backend: str, rows: str = "predicted"):
        super().__init__()
        if rows not in DECODER_ROWS:
            raise ValueError(f"decoder_rows {rows!r} is invalid: choose one of {DECODER_ROWS}")
        self.rows = rows
        dim = cfg.decoder_embed_dim
        self.blocks = make_blocks(dim, cfg.decoder_num_heads, cfg.mlp_ratio, depth, drop_path_rate,
                                  backend=attn_backend)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out_dim)
        self.use_checkpoint = use_checkpoint
        self.apply(init_xavier)

    def forward(self, x: torch.Tensor, num_predict: int) -> torch.Tensor:
        if self.rows == "all":
            return self.head(self.norm(run_blocks(self.blocks, x, self.use_checkpoint)[:, -num_predict:]))
        x = run_blocks(self.blocks, x, self.use_checkpoint, num_output=num_predict)  # [B, num_predict, D]
        return self.head(self.norm(x))


class PretrainVisionTransformer(nn.Module):
    """The official pretraining model. ``model(video, encoder_mask, decoder_mask)`` -> predictions.

    Args to ``forward``:
        video: ``[B, 3, T, H, W]`` float, ImageNet-normalised.
        encoder_mask: ``[B, N]`` bool (True = masked) **or** encoder-visible ids ``[B, Nv]`` (ascending).
        decoder_mask: ``[B, N]`` bool (True = not reconstructed) **or** decoder-visible ids ``[B, Nd]``
            (ascending); ``None`` = VideoMAE v1 (decode every encoder-masked token).
    Returns ``[B, Nd, 3 * tubelet * p * p]``: predictions for the decoder-visible tokens in ascending
    token order, channel layout ``(p0 p1 p2 c)``. Bool masks cost one host sync (to read ``Nv``/``Nd``);
    pass ids on the hot path. ``kernel_backend`` picks the token-op backend (``auto``, ``torch``, ``triton``,
    ...; see :mod:`vmae2_kernels.dispatch`). ``embed_tokens``: see :class:`PretrainEncoder`; ``decoder_rows``: see
    :class:`PretrainDecoder` (``all`` with ``embed_tokens="all"`` is the official work, FLOP for FLOP).
    ``use_checkpoint``: activation checkpointing of the encoder and decoder blocks, ``False``/``True`` (every block) or a mode of
    :data:`~vmae2.models.configs.CHECKPOINT_MODES`.
    """

    def __init__(self, cfg: ViTConfig, *, img_size: int = 224, num_frames: int = 16, tubelet_size: int = 2,
                 decoder_depth: int = 4, drop_path_rate: float = 0.0, use_checkpoint: bool | str = False,
                 attn_backend: str = "auto", kernel_backend: str = "auto", embed_tokens: str = "visible",
                 decoder_rows: str = "predicted"):
        super().__init__()
        check_geometry(img_size, num_frames, tubelet_size, cfg.patch_size)
        use_checkpoint = checkpoint_mode(use_checkpoint)
        self.cfg = cfg
        self.kernel_backend = kernel_backend
        self.encoder = PretrainEncoder(cfg, img_size, num_frames, tubelet_size, drop_path_rate, use_checkpoint,
                                       attn_backend, kernel_backend, embed_tokens)
        out_dim = 3 * tubelet_size * cfg.patch_size ** 2
        self.decoder = PretrainDecoder(cfg, decoder_depth, out_dim, drop_path_rate, use_checkpoint, attn_backend,
                                       decoder_rows)
        self.encoder_to_decoder = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim, bias=False)  # PyTorch default init
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)  # official bounds: +-std
        self.register_buffer("decoder_pos_embed", sinusoid_table(self.num_patches, cfg.decoder_embed_dim),
                             persistent=False)

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid ``(T', H', W')``."""
        return self.encoder.patch_embed.grid

    @property
    def num_patches(self) -> int:
        return self.encoder.patch_embed.num_patches

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    @property
    def tubelet_size(self) -> int:
        return self.encoder.patch_embed.tubelet_size

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def forward(self, video: torch.Tensor, encoder_mask: torch.Tensor,
                decoder_mask: torch.Tensor | None = None) -> torch.Tensor:
        vis_ids, dec_ids = dual_ids(encoder_mask, decoder_mask, self.num_patches)
        if vis_ids.shape[0] != video.shape[0]:
            raise ValueError(f"masks have batch {vis_ids.shape[0]} but video has batch {video.shape[0]}")
        x_vis = self.encoder_to_decoder(self.encoder(video, vis_ids))  # [B, Nv, D_dec]
        x = vmae2_kernels.decoder_input(x_vis, vis_ids, dec_ids, self.mask_token, self.decoder_pos_embed,
                                        backend=self.kernel_backend)
        return self.decoder(x, dec_ids.shape[1])

