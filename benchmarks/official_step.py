"""The two arms of the step benchmark: the official step (``oracle/``) and the same step by vmae2.

This is the baseline of ``test_step_benchmarks.py``. The official side is :class:`oracle.OfficialStep` on
:class:`oracle.OfficialPretrainModel` (boolean gathers, explicit softmax attention, the fp32 target of
every patch, ``loss.item()`` per step, AdamW with the official groups). :class:`Vmae2Step` is the same step through
vmae2's hot path (ids instead of bool masks, fused token ops and loss, the attention backend vmae2 picks),
mirroring the inner loop of ``vmae2.train`` for one micro-batch. Run from the checkout's root (``oracle`` importable).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from oracle import PRECISIONS, OfficialStep, autocast_for, official_from_vmae2, official_optimizer
from vmae2 import attention, masking
from vmae2.flops import model_flops_per_clip
from vmae2.models import create_model
from vmae2.train import TrainConfig
from vmae2.training.optim import frees_grads_before_backward, optimizer_step
from vmae2_kernels import dispatch

__all__ = ["Vmae2Step", "vmae2_optimizer", "PRECISIONS", "Size", "SIZES", "make_step"]


# -- vmae2's step ---------------------------------------------------------------------------------------------

def vmae2_optimizer(model, lr: float, weight_decay: float = 0.05, betas=(0.9, 0.95),
                    eps: float = 1e-8) -> torch.optim.AdamW:
    """The optimizer ``vmae2.train`` builds."""
    from vmae2.training.optim import build_optimizer

    return build_optimizer(model, lr, weight_decay, betas, eps)


class Vmae2Step:
    """One vmae2 training step on fixed inputs, as ``vmae2.train`` runs a micro-batch (no accumulation).

    ``enc_ids [B, Nv]`` / ``dec_ids [B, Nd]`` are the ascending kept ids (``dec_ids=None``: VideoMAE v1). The
    gradient norm is measured every ``norm_every`` steps, as ``vmae2.train`` measures it on log steps only.
    """

    def __init__(self, model, optimizer: torch.optim.Optimizer, video: torch.Tensor, enc_ids: torch.Tensor,
                 dec_ids: torch.Tensor | None, precision: str = "fp32", kernel_backend: str = "auto",
                 norm_every: int = TrainConfig.log_every):
        self.model, self.optimizer, self.video = model, optimizer, video
        self.enc_ids, self.dec_ids = enc_ids, dec_ids
        self.precision, self.kernel_backend = precision, kernel_backend
        self.scaler = torch.amp.GradScaler(video.device.type) if precision == "fp16" else None
        self.loss_sum = torch.zeros((), device=video.device)  # train.py's device-side accumulators (no sync)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=video.device)
        self.last_grad_norm = None
        self.steps, self.norm_every = 0, norm_every

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
        early_free = frees_grads_before_backward(self.video.device)
        if early_free:
            self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        self.loss_sum += loss.detach()
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss.detach()), 0, self.first_bad)
        self.steps += 1
        logs = self.steps % self.norm_every == 0
        norm = optimizer_step(self.optimizer, self.scaler, self.model.parameters(), None, free_grads=not early_free,
                              norm=logs)
        self.last_grad_norm = norm if logs else self.last_grad_norm
        return loss.detach()


# -- the compared steps on seeded inputs (built outside any timed region) ----------------------------------

ENC_RATIO, DEC_RATIO = 0.9, 0.5
CLIP_FRAMES = 16  # the official pretraining clip: 16 frames of 224 x 224
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


def build_model(size: Size, device: torch.device, embed_tokens: str = "visible",
                num_frames: int = CLIP_FRAMES):
    """vmae2 model with a fixed seed: every arm of a size starts from the same weights (``embed_tokens`` changes
    the work, not the weights)."""
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device (fast for ViT-g); the position tables are made on the
        model = create_model(size.model, use_checkpoint=size.checkpoint,  # CPU whatever the context: .to() below
                             embed_tokens=embed_tokens, num_frames=num_frames)
    return model.to(device).train()


def build_inputs(model, batch: int, device: torch.device):
    """Clip batch ``[B, 3, T, 224, 224]`` fp32 (``T`` the model's frames), tube encoder ids (0.9) and running-cell
    decoder ids (0.5)."""
    g = torch.Generator().manual_seed(1)
    pe = model.encoder.patch_embed
    video = torch.randn(batch, 3, pe.num_frames, pe.img_size, pe.img_size, generator=g).to(device)
    enc_ids = masking.tube_ids(batch, model.grid, ENC_RATIO, generator=g).to(device)
    dec_ids = masking.running_cell_ids(batch, model.grid, DEC_RATIO, generator=g).to(device)
    return video, enc_ids, dec_ids


def official_label(official_repo: str | None) -> str:
    """What the official arm runs, without the local path: the restated oracle, or the checkout's model file and
    its sha256 (so a results file shows it was unmodified)."""
    if not official_repo:
        return "oracle/ (restated)"
    import hashlib
    from pathlib import Path

    digest = hashlib.sha256((Path(official_repo) / "models" / "modeling_pretrain.py").read_bytes()).hexdigest()
    return f"VideoMAEv2 models/modeling_pretrain.py, unmodified (sha256 {digest[:16]})"


def make_step(arm: str, size: Size, precision: str, batch: int, device: torch.device,
              official_repo: str | None = None, num_frames: int = CLIP_FRAMES):
    """``(step object, facts)`` of ``arm`` (``official``, ``vmae2``/``dual``, ``v1``): facts = attention, token ops,
    tokens, forward GMACs per clip (the official arm's are the paper's: every tubelet embedded) and model TFLOP
    per step. The official arm's model is the restated one (``oracle/``), or with ``official_repo``
    the unmodified ``models/modeling_pretrain.py`` of that VideoMAE V2 checkout (:mod:`benchmarks.official_repo`)."""
    model = build_model(size, device, "all" if arm == "official" else "visible", num_frames)
    video, enc_ids, dec_ids = build_inputs(model, batch, device)
    N, nv = model.num_patches, enc_ids.shape[1]
    nd = N - nv if arm == "v1" else dec_ids.shape[1]
    flops = model_flops_per_clip(model, nv, nd)  # 3 x forward, 2 FLOPs per MAC
    facts = dict(encoder_tokens=nv, decoded_tokens=nd, decoder_seq_len=nv + nd, fwd_gmacs_per_clip=flops / 6e9,
                 model_tflop_per_step=flops * batch / 1e12)
    if arm == "official":
        if official_repo:
            from benchmarks.official_repo import load_official_model

            official = load_official_model(official_repo, model, size.model)
        else:
            official = official_from_vmae2(model)
        enc_mask, dec_mask = masking.ids_to_mask(enc_ids, N), masking.ids_to_mask(dec_ids, N)
        del model
        step = OfficialStep(official, official_optimizer(official, LR, WEIGHT_DECAY), video, enc_mask, dec_mask,
                            precision)
        return step, dict(facts, attention="official explicit softmax", token_ops="boolean indexing",
                          official_model=official_label(official_repo))
    step = Vmae2Step(model, vmae2_optimizer(model, LR, WEIGHT_DECAY), video, enc_ids,
                     None if arm == "v1" else dec_ids, precision)
    amp = PRECISIONS[precision] or torch.float32
    attn = ", ".join(sorted({e["backend"] for e in attention.explain(model, device, amp)}))
    return step, dict(facts, attention=attn, token_ops=dispatch.choose("decoder_input", device.type))
