"""``python -m vmae2.train``: VideoMAE V2 dual-masking pretraining, from a CPU demo to ``torchrun`` on many nodes.

With no arguments (the ``demo`` preset) it pretrains the vmae2-only tiny model on generated videos (cached) for
a few minutes and leaves checkpoints, ``metrics.jsonl``, ``model.safetensors`` and ``reconstruction.png`` in
``output/demo``. ``--preset vit_g_hybrid_pt --data_path LIST`` runs the official recipe (with ``torchrun`` for
many GPUs). ``--help`` lists every option.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections import deque
from pathlib import Path

import torch
import torch.distributed as dist

from vmae2 import masking
from vmae2.checkpoint import load_weights, save_safetensors
from vmae2.config import TrainConfig, parse_config, to_dict
from vmae2.data import ClipConfig, MixedList, PretrainLoader, make_videos, read_list
from vmae2.flops import model_flops_per_clip, peak_flops
from vmae2.loss import flat_colour_loss, reconstruction_loss
from vmae2.models import create_model
from vmae2.runtime import (
    Checkpoints,
    Dist,
    MetricsLog,
    NonFiniteLoss,
    agreed_stop,
    build_optimizer,
    check_output_dir,
    cosine_schedule,
    finish_distributed,
    optimizer_step,
    peak_memory_mb,
    resolve_device,
    rng_state,
    set_rng_state,
    set_schedule,
    setup_distributed,
    step_generator,
    stop_signals,
)

log = logging.getLogger("vmae2.train")
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
    lists = [read_list(p, kind="pretrain", data_root=cfg.data_root, step=cfg.sampling_rate) for p in paths]
    mixed = MixedList(list(zip(lists, weights)), seed=cfg.seed)
    clip = ClipConfig(clip_len=cfg.num_frames, input_size=cfg.input_size, num_sample=cfg.num_sample)
    return PretrainLoader(mixed, batch_size=cfg.batch_size, config=clip, seed=cfg.seed, rank=d.rank,
                          world_size=d.world_size, backend=cfg.data_backend, device=device,
                          num_workers=cfg.num_workers, quarantine=Path(cfg.output_dir) / "quarantine.tsv")


def build_model(cfg: TrainConfig, device: torch.device, d: Dist):
    """Returns ``(module to run, module whose state_dict is saved)``: keys never carry wrapper prefixes."""
    model = create_model(cfg.model, num_frames=cfg.num_frames, img_size=cfg.input_size,
                         tubelet_size=cfg.tubelet_size, decoder_depth=cfg.decoder_depth,
                         drop_path_rate=cfg.drop_path, use_checkpoint=cfg.with_checkpoint,
                         attn_backend=cfg.attn_backend, kernel_backend=cfg.kernel_backend)
    if cfg.init:
        report = load_weights(model, cfg.init, strict=False)
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
    if cfg.compile:
        runner = torch.compile(runner)
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


def checkpoint_state(cfg, model, optimizer, scaler, step: int, d: Dist) -> dict:
    if cfg.fsdp and d.world_size > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state, optim_state = get_state_dict(model, optimizer, options=opts)
    else:
        model_state, optim_state = model.state_dict(), optimizer.state_dict()
    return {"model": model_state, "optimizer": optim_state, "scaler": scaler.state_dict() if scaler else None,
            "step": step, "rng": rng_state(), "world_size": d.world_size,
            "config": to_dict(cfg)}


def restore(state: dict, cfg, model, optimizer, scaler, d: Dist) -> int:
    if cfg.fsdp and d.world_size > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    if scaler and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    if state.get("world_size", 1) != d.world_size:
        log.warning("checkpoint was written with world size %s, now %s: the data order changes",
                    state.get("world_size"), d.world_size)
    return int(state["step"])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_config(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return train(cfg)
    except NonFiniteLoss as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:  # bad data lists, output folder, ... found before training
        print(f"error: {exc}", file=sys.stderr)
        return 2


def train(cfg: TrainConfig) -> int:
    device = resolve_device(cfg.device, Dist())
    d = setup_distributed(device.type)
    device = resolve_device(cfg.device, d)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    loader = build_loader(cfg, d, device)
    if len(loader) < cfg.accum_steps:
        raise ValueError(f"the data gives {len(loader)} batches per epoch per process; need at least --accum_steps "
                         f"{cfg.accum_steps}: add videos or lower --batch_size {cfg.batch_size}")
    runner, model = build_model(cfg, device, d)
    n_params = sum(p.numel() for p in model.parameters())
    if d.is_main:
        check_output_dir(cfg.output_dir, needed_bytes=n_params * 4 * 3 + 2**20)  # weights + 2 AdamW moments
    if d.world_size > 1:
        dist.barrier()

    # Official lr scaling: by the global batch of videos (num_sample is not counted), per optimizer step.
    global_videos = cfg.batch_size * d.world_size * cfg.accum_steps
    lr = cfg.lr * global_videos / 256
    min_lr = cfg.min_lr * global_videos / 256
    steps_per_epoch = max(len(loader) // cfg.accum_steps, 1)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else int(cfg.warmup_epochs * steps_per_epoch)
    lr_at = cosine_schedule(lr, min_lr, total_steps, warmup)
    wd_at = cosine_schedule(cfg.weight_decay, cfg.weight_decay_end if cfg.weight_decay_end is not None
                            else cfg.weight_decay, total_steps, 0)
    optimizer = build_optimizer(model, lr, cfg.weight_decay, cfg.opt_betas, cfg.opt_eps, fused=not cfg.fsdp)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    checkpoints = Checkpoints(cfg.output_dir, cfg.keep_last)
    resume_from = checkpoints.latest() if cfg.resume == "auto" else (None if cfg.resume == "none" else cfg.resume)
    start_step = 0
    if resume_from:
        start_step = restore(Checkpoints.load(resume_from), cfg, model, optimizer, scaler, d)
        if d.is_main:
            print(f"resumed from {resume_from} at step {start_step}", flush=True)

    stop_signal = stop_signals()

    grid = model.grid
    clips_local = cfg.batch_size * cfg.num_sample
    metrics = MetricsLog(cfg.output_dir, total_steps, start_step, enabled=d.is_main)
    if d.is_main:
        print(f"{cfg.model}: {n_params / 1e6:.2f}M params, {d.world_size} process(es) on {device}, {precision}, "
              f"{total_steps} steps of {global_videos} videos x {cfg.num_sample} views, lr {lr:.2e}", flush=True)

    # Device-side accumulators: read on the host only on log steps (no per-step sync).
    loss_sum = torch.zeros((), device=device)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    recent_slots: deque = deque(maxlen=cfg.log_every * cfg.accum_steps * cfg.batch_size)
    flops = None
    window_start, window_steps = time.perf_counter(), 0

    def check_finite() -> None:
        """The host reads the first non-finite step (agreed by all ranks, so every rank stops together)."""
        if d.world_size > 1:
            dist.all_reduce(first_bad, op=dist.ReduceOp.MAX)
        bad = int(first_bad.item())
        if bad >= 0:
            raise_nonfinite(bad)

    def save(step: int) -> None:
        check_finite()  # before every save: a checkpoint never holds a diverged model
        state = checkpoint_state(cfg, model, optimizer, scaler, step, d)
        if d.is_main:
            checkpoints.save(state, step)

    def raise_nonfinite(bad_step: int) -> None:
        slots = [s for st, s in recent_slots if st == bad_step]
        latest = checkpoints.latest()
        raise NonFiniteLoss(f"the loss became non-finite at step {bad_step} (epoch positions {slots}); stopped "
                            f"without saving. The last good checkpoint is {latest}. Lower --lr, set --clip_grad, "
                            f"or check the data; then --resume auto")

    micro_done = start_step * cfg.accum_steps
    epoch, batch_in_epoch = divmod(micro_done, len(loader))
    loader.set_epoch(epoch)
    batches = loader.iterate(batch_in_epoch)
    step = start_step
    runner.train()
    stopping = False
    while step < total_steps and not stopping:
        set_schedule(optimizer, float(lr_at[step]), float(wd_at[step]))
        for micro in range(cfg.accum_steps):
            batch = next(batches, None)
            if batch is None:  # next epoch
                epoch += 1
                loader.set_epoch(epoch)
                batches = loader.iterate(0)
                batch = next(batches)
            recent_slots.extend((step, s) for s in batch.slots)
            video = batch.video
            enc, dec = make_masks(cfg, grid, clips_local * d.world_size, d, step, micro, device)
            sync = micro == cfg.accum_steps - 1
            ctx = runner.no_sync() if (not sync and hasattr(runner, "no_sync")) else contextlib.nullcontext()
            with ctx, torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pred = runner(video, enc, dec)
                loss = reconstruction_loss(pred, video, enc, dec, patch_size=model.patch_size,
                                           tubelet_size=model.tubelet_size, normalize_target=cfg.normalize_target,
                                           backend=cfg.kernel_backend)
                if cfg.inject_nan_step is not None and step == cfg.inject_nan_step:
                    loss = loss * float("nan")
                scaled = _global_loss(loss, enc, dec, grid, d) if cfg.loss_reduction == "global" else loss
                objective = scaled / cfg.accum_steps
                (scaler.scale(objective) if scaler else objective).backward()
            loss_sum += scaled.detach() / (d.world_size if cfg.loss_reduction == "global" else 1) / cfg.accum_steps
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
        grad_norm = optimizer_step(optimizer, scaler, model.parameters(), cfg.clip_grad)
        step += 1
        window_steps += 1

        if d.world_size == 1:
            stopping = bool(stop_signal)
        if step % cfg.log_every == 0 or step == total_steps:
            check_finite()  # the one host sync, on log steps only
            stopping = agreed_stop(stop_signal, d, device)
            if d.world_size > 1:
                dist.all_reduce(loss_sum)
                loss_sum /= 1 if cfg.loss_reduction == "global" else d.world_size
            elapsed = time.perf_counter() - window_start
            clips_per_s = window_steps * cfg.accum_steps * clips_local * d.world_size / elapsed
            nv = enc.shape[1]
            nd = dec.shape[1] if dec is not None else model.num_patches - nv
            tokens = nv + (nv + nd)  # encoder tokens + decoder tokens per clip
            flops = flops or model_flops_per_clip(model, nv, nd)
            peak = peak_flops(device)
            record = {"step": step, "epoch": epoch, "loss": loss_sum.item() / window_steps,
                      "recon_vs_flat": float(loss.detach() / _flat_loss(cfg, model, video, enc, dec)),
                      "lr": float(lr_at[step - 1]),
                      "grad_norm": float(grad_norm), "clips_per_s": clips_per_s, "tokens_per_s": clips_per_s * tokens,
                      "data_wait_frac": loader.telemetry.wait_fraction, "peak_mem_mb": peak_memory_mb(device),
                      "mfu": clips_per_s * flops / (peak * d.world_size) if peak else None,
                      "skipped_videos": sum(loader.ledger.encounters.values())}
            metrics.write(record)
            loss_sum.zero_()
            window_start, window_steps = time.perf_counter(), 0
        if step % cfg.save_every_steps == 0 or step == total_steps or stopping:
            save(step)
    metrics.close()
    if stopping:
        if d.is_main:
            print(f"\nstopped by signal {stop_signal[0]} at step {step}; checkpoint saved, --resume auto continues",
                  flush=True)
        if d.world_size > 1:
            del runner
            finish_distributed()
        return 0
    weights = model.state_dict() if not (cfg.fsdp and d.world_size > 1) else \
        checkpoint_state(cfg, model, optimizer, scaler, step, d)["model"]  # gathered on every rank
    if d.is_main:
        save_safetensors(weights, Path(cfg.output_dir) / "model.safetensors")
        if cfg.fsdp and d.world_size > 1:  # draw with an unsharded copy: rank 0 alone cannot run the FSDP model
            model, _ = build_model(cfg, device, Dist())
            model.load_state_dict(weights)
        rel = _reconstruction_report(cfg, model, loader, device)
        print(f"done: {step} steps; reconstruction error {rel:.3f}x the flat-colour baseline "
              f"(1 = predicting flat colours); outputs in {cfg.output_dir}", flush=True)
    if d.world_size > 1:
        del runner
        finish_distributed()
    return 0


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
    steps 0, 1, ...), and ``reconstruction.png`` of the first clip."""
    from vmae2.visualize import reconstruction_grid

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
            reconstruction_grid(model, video[:1], enc[:1], None if dec is None else dec[:1],
                                cfg.normalize_target).save(path)
            print(f"wrote {path}", flush=True)
    return loss / flat


if __name__ == "__main__":
    raise SystemExit(main())
