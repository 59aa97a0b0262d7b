"""The pretraining run of ``python -m vmae2.train`` (:func:`run`): loader, model, masks, the step loop, checkpoints,
metrics and the demo's reconstruction report."""
from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from vmae2 import masking
from vmae2.data import ClipConfig, MixedList, PretrainLoader, make_videos, read_list
from vmae2.data.decode import upscale_note
from vmae2.data.lists import check_found
from vmae2.data.shards import ShardList, is_shards
from vmae2.flops import mfu, model_flops_per_clip, peak_flops
from vmae2.loss import flat_colour_loss, reconstruction_loss
from vmae2.models import create_model
from vmae2.runs.plan import resolve_checkpoint
from vmae2.training import loop
from vmae2.training.distributed import Dist, step_generator
from vmae2.training.log import peak_memory_mb
from vmae2.training.loop import Setup, Task
from vmae2.training.optim import build_optimizer
from vmae2.weights import load_weights, save_safetensors

if TYPE_CHECKING:  # the command's config, for annotations only: vmae2.train names this module's run
    from vmae2.train import TrainConfig

DEMO_DIR = Path(os.environ.get("VMAE2_CACHE", Path.home() / ".cache" / "vmae2")) / "demo_videos_v2"


def demo_list() -> str:
    """The embedded default data: 128 generated H.264/VP9 clips of flat objects moving over a gradient (the
    ``flat`` style), made once and cached."""
    listing = DEMO_DIR / "train.csv"
    if not listing.exists():
        print(f"generating the demo videos in {DEMO_DIR} (once) ...", flush=True)
        make_videos(DEMO_DIR, 128, seed=0, sizes=((128, 128), (160, 128)), num_frames=(24, 32), style="flat")
    return str(listing)


def build_loader(cfg: TrainConfig, d: Dist, device: torch.device) -> PretrainLoader:
    paths = (cfg.data_path or demo_list()).split(",")
    weights = [float(w) for w in cfg.data_weights.split(",")] if cfg.data_weights else [1.0] * len(paths)
    if len(weights) != len(paths):
        raise ValueError(f"--data_weights has {len(weights)} values for {len(paths)} lists in --data_path")
    if len(paths) == 1 and is_shards(paths[0]):  # a sharded corpus (make_shards), read as one seeded stream
        mixed = ShardList.open(paths[0], seed=cfg.seed, step=cfg.sampling_rate)
    else:
        lists = [read_list(p, kind="pretrain", data_root=cfg.data_root, step=cfg.sampling_rate) for p in paths]
        for path, records in zip(paths, lists):
            check_found(records, path, cfg.data_root)
        mixed = MixedList(list(zip(lists, weights)), seed=cfg.seed)
    if d.is_main and (note := upscale_note(mixed.records, cfg.input_size, "--input_size")):
        print(note, flush=True)
    clip = ClipConfig(clip_len=cfg.num_frames, input_size=cfg.input_size, num_sample=cfg.num_sample)
    return PretrainLoader(mixed, batch_size=cfg.batch_size, config=clip, seed=cfg.seed, rank=d.rank,
                          world_size=d.world_size, backend=cfg.data_backend, device=device,
                          num_workers=cfg.num_workers, quarantine=Path(cfg.output_dir) / "quarantine.tsv",
                          accum_steps=cfg.accum_steps)


def build_model(cfg: TrainConfig, device: torch.device, d: Dist):
    """Returns ``(module to run, module whose state_dict is saved)``: keys never carry wrapper prefixes."""
    model = create_model(cfg.model, num_frames=cfg.num_frames, img_size=cfg.input_size,
                         tubelet_size=cfg.tubelet_size, decoder_depth=cfg.decoder_depth,
                         drop_path_rate=cfg.drop_path, use_checkpoint=resolve_checkpoint(cfg, device, d.world_size),
                         attn_backend=cfg.attn_backend, kernel_backend=cfg.kernel_backend,
                         embed_tokens=cfg.embed_tokens)
    if cfg.init:
        report = load_weights(model, cfg.init, strict=False, partial=cfg.init_partial)
        print(f"initialised from {cfg.init}: {report}", flush=True)
    model.to(device)
    runner = model
    if cfg.fsdp and d.world_size > 1:
        from torch.distributed.fsdp import fully_shard

        for block in [*model.encoder.blocks, *model.decoder.blocks]:
            fully_shard(block)
        runner = fully_shard(model)
    elif d.world_size > 1:
        runner = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.index is
                                                           not None else None)
    return runner, model


def make_masks(cfg: TrainConfig, grid, clips_global: int, d: Dist, step: int, micro: int, device):
    """Encoder/decoder ids for this rank's rows of the global batch: drawn for the whole global batch from
    ``(seed, step, micro)``, so every world size sees the same masks per clip."""
    g = step_generator(cfg.seed, step, micro, device)
    if cfg.mask_type == "tube":
        enc = masking.tube_ids(clips_global, grid, cfg.mask_ratio, generator=g)
    else:
        enc = masking.random_ids(clips_global, grid, cfg.mask_ratio, generator=g)
    dec = None
    if cfg.decoder_mask_type != "none":
        dec = masking.decoder_ids(cfg.decoder_mask_type, clips_global, grid, cfg.decoder_mask_ratio, generator=g)

    def mine(ids):  # rank r holds videos r, r + W, ... of the global batch, each as num_sample rows
        ids = ids.reshape(-1, cfg.num_sample, ids.shape[-1])[d.rank::d.world_size]
        return ids.reshape(-1, ids.shape[-1])

    return mine(enc), (mine(dec) if dec is not None else None)


class PretrainTask(Task):
    """Dual-masking MAE pretraining: clips, tube + running-cell masks drawn on the device, the fused loss."""

    ENTRY = "train"

    def __init__(self, s: Setup):
        super().__init__(s)
        cfg = self.cfg
        self.loader = build_loader(cfg, s.dist, s.device)
        self.runner, self.model = build_model(cfg, s.device, s.dist)
        self.sharded = cfg.fsdp and s.dist.world_size > 1
        self.log_divisor_per_rank = cfg.loss_reduction != "global"
        self.recent_slots: deque = deque(maxlen=cfg.log_every * cfg.accum_steps * cfg.batch_size)
        self.last = None  # (loss, video, enc, dec) of the last micro-batch, for the log
        self.flops = None

    def build_optimizer(self, lr: float) -> torch.optim.Optimizer:
        cfg = self.cfg
        return build_optimizer(self.model, lr, cfg.weight_decay, cfg.opt_betas, cfg.opt_eps, fused=not cfg.fsdp)

    def forward(self, batch, step: int, micro: int):
        cfg, d, model = self.cfg, self.dist, self.model
        self.recent_slots.extend((step, slot) for slot in batch.slots)
        video = batch.video
        clips_global = cfg.batch_size * cfg.num_sample * d.world_size
        enc, dec = make_masks(cfg, model.grid, clips_global, d, step, micro, self.setup.device)
        pred = self.runner(video, enc, dec)
        loss = reconstruction_loss(pred, video, enc, dec, patch_size=model.patch_size, tubelet_size=model.tubelet_size,
                                   normalize_target=cfg.normalize_target, backend=cfg.kernel_backend)
        if cfg.inject_nan_step is not None and step == cfg.inject_nan_step:
            loss = loss * float("nan")
        self.last = (loss, video, enc, dec)
        if cfg.loss_reduction != "global":
            return loss, loss, loss
        scaled = _global_loss(loss, enc, dec, model.grid, d)
        return scaled, scaled / d.world_size, loss

    def log_fields(self, clips_per_s: float) -> dict:
        loss, video, enc, dec = self.last
        model, device = self.model, self.setup.device
        nv = enc.shape[1]
        nd = dec.shape[1] if dec is not None else model.num_patches - nv
        self.flops = self.flops or model_flops_per_clip(model, nv, nd)
        peak = peak_flops(device, self.cfg.run_precision(device.type))
        return {"recon_vs_flat": float(loss.detach() / _flat_loss(self.cfg, model, video, enc, dec)),
                "tokens_per_s": clips_per_s * (nv + (nv + nd)),  # encoder tokens + decoder tokens per clip
                "peak_mem_mb": peak_memory_mb(device),
                "mfu": mfu(clips_per_s * self.flops / self.dist.world_size, 1.0, peak)}  # one device's second

    def state(self) -> dict:
        if not self.sharded:
            return super().state()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        model, optim = get_state_dict(self.model, self.optimizer,
                                      options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {"model": model, "optimizer": optim}

    def load_state(self, state: dict) -> None:
        if not self.sharded:
            return super().load_state(state)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"],
                       options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))

    def nonfinite_detail(self, bad_step: int) -> str:
        return f" (epoch positions {[slot for st, slot in self.recent_slots if st == bad_step]})"

    def finish(self, step: int) -> None:
        cfg, d = self.cfg, self.dist
        weights = self.state()["model"] if self.sharded else self.model.state_dict()  # gathered on every rank
        if not d.is_main:
            return
        save_safetensors(weights, Path(cfg.output_dir) / "model.safetensors")
        model = self.model
        if self.sharded:  # draw with an unsharded copy: rank 0 alone cannot run the FSDP model
            model, _ = build_model(cfg, self.setup.device, Dist())
            model.load_state_dict(weights)
        rel = _reconstruction_report(cfg, model, self.loader, self.setup.device)
        print(f"done: {step} steps; reconstruction error {rel:.3f}x the flat-colour baseline "
              f"(1 = predicting flat colours); outputs in {cfg.output_dir}", flush=True)
        if rel >= PLATEAU:
            print(plateau_advice(rel, cfg), flush=True)


PLATEAU = 0.95  # a final error above this share of the flat-colour baseline: the model predicts colours only


def plateau_advice(rel: float, cfg: TrainConfig) -> str:
    """What a run whose reconstruction stayed at the flat-colour plateau says, with what to try."""
    return (f"WARNING: the reconstruction stayed at the flat-colour plateau ({rel:.2f}x): the model predicts each "
            f"clip's colours, not its content, so its features are not worth fine-tuning yet. Try: more steps "
            f"(--max_steps {2 * cfg.max_steps if cfg.max_steps else 'N'}), a lower --mask_ratio (now "
            f"{cfg.mask_ratio}), --normalize_target false if it is true; if the clips are mostly noise or static "
            f"texture there is little more to learn from them (see reconstruction.png)")


def run(cfg: TrainConfig) -> int:
    """Pretrain as ``cfg`` says; exit code 0, 2 (bad data lists, output folder, ... found before training) or 3
    (the loss stopped being finite)."""
    return loop.run(PretrainTask, cfg)


def _global_loss(loss: torch.Tensor, enc: torch.Tensor, dec, grid, d: Dist) -> torch.Tensor:
    """Rescale this rank's weighted mean so that DDP's gradient average equals the weighted mean over every
    rank's supervised tokens (a single process with the global batch gives the same numbers)."""
    if d.world_size == 1:
        return loss
    n = grid[0] * grid[1] * grid[2]
    dec = masking.complement_ids(enc, n) if dec is None else dec
    w_local = torch.gather(masking.ids_to_mask(enc, n), 1, dec).sum().float()
    w_global = w_local.clone()
    dist.all_reduce(w_global)  # a collective on the device stream, no host sync
    return loss * w_local / w_global * d.world_size


def _flat_loss(cfg, model, video, enc, dec) -> torch.Tensor:
    """The loss of predicting flat colours on this batch (see :func:`vmae2.loss.flat_colour_loss`)."""
    return flat_colour_loss(video, enc, dec, patch_size=model.patch_size, tubelet_size=model.tubelet_size,
                            normalize_target=cfg.normalize_target)


@torch.no_grad()
def _reconstruction_report(cfg, model, loader, device, num_batches: int = 4) -> float:
    """Loss / flat-colour loss of the final model on the first ``num_batches`` batches of epoch 0 (masks of
    steps 0, 1, ...), and ``reconstruction.png`` of the first clip (or the reason it was skipped)."""
    from vmae2.visualize import save_reconstruction_png

    loader.set_epoch(0)
    model.eval()
    loss = flat = 0.0
    for i, batch in zip(range(num_batches), loader.iterate(0)):
        video = batch.video
        enc, dec = make_masks(cfg, model.grid, video.shape[0], Dist(), i, 0, device)
        pred = model(video, enc, dec)
        loss += float(reconstruction_loss(pred, video, enc, dec, patch_size=model.patch_size,
                                          tubelet_size=model.tubelet_size, normalize_target=cfg.normalize_target))
        flat += float(_flat_loss(cfg, model, video, enc, dec))
        if i == 0:
            path = Path(cfg.output_dir) / "reconstruction.png"
            print(save_reconstruction_png(model, video[:1], enc[:1], None if dec is None else dec[:1], path,
                                          cfg.normalize_target) or f"wrote {path}", flush=True)
    return loss / flat
